//! The environment, typed and validated.
//!
//! Every variable is first read as a raw string with `envy` (so a bad value can never
//! abort the read half-way), then validated as a whole: every problem is collected and
//! reported at once, by variable name, with what was expected. Nothing outside this
//! module reads the program's configuration from the environment: the prefixed
//! families (the object-store keys `AWS_*`, `SOURCE_AWS_*`…, and libpq's `PG*`,
//! `RESTORE_PG*`) are gathered here too. Other modules read only the process's
//! context: `HOSTNAME` (who holds a lock, the Lease, an Event), `PATH` (pg_dump when
//! PG_BIN_DIR is unset), the names of the inherited `PG*` variables (to remove them
//! from a child's environment, so libpq sees only the settings given) and
//! `PG_SERVER_BIN_DIR` (where `demo` and the tests find a throwaway server's programs).
//!
//! Each variable is declared once, in `variables!`: its name, default and
//! description make a constant of [`vars`], and every check takes that constant, so an
//! unset variable is read as its declared default through the variable's own parse.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::retention::Policy;
use crate::schedule::{self, Schedule};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Variable {
    pub name: &'static str,
    pub default: Unset,
    pub description: &'static str,
}

/// What a variable is when unset (an empty variable is unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Unset {
    /// This value, written as the variable would be: the checks read an unset variable
    /// as if it held it, through the same parse.
    Value(&'static str),
    /// No value stands in for it (required, not used, another variable's, or decided
    /// at run time): what happens then, in words.
    Described(&'static str),
}

impl Variable {
    /// The value an unset variable stands for, when it has one.
    pub fn default_value(&self) -> Option<&'static str> {
        match self.default {
            Unset::Value(v) => Some(v),
            Unset::Described(_) => None,
        }
    }
}

impl fmt::Display for Unset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unset::Value(s) | Unset::Described(s) => f.write_str(s),
        }
    }
}

/// Declares every variable once, as ripgrep's `flags/defs.rs` declares its flags: its
/// name, its default and its description make one constant of [`vars`] (which the
/// checks take, so neither the name nor the default is written again) and one entry
/// of [`VARIABLES`], in the reference table's order. `IDENT = "NAME*"` declares a
/// family of variables, read by prefix.
macro_rules! variables {
    ($($id:ident $(= $name:literal)?: $default:expr, $description:expr;)*) => {
        /// Every variable the program reads, one constant each (families end in `_FAMILY`).
        pub mod vars {
            use super::Unset::{Described, Value};
            use super::Variable;
            $(pub const $id: Variable = Variable { name: variables!(@name $id $($name)?), default: $default, description: $description };)*
        }
        /// Every variable the program reads. Names ending in `*` are families.
        pub const VARIABLES: &[Variable] = &[$(vars::$id),*];
    };
    (@name $id:ident) => { stringify!($id) };
    (@name $id:ident $name:literal) => { $name };
}

variables! {
    PACHYDERM_NAMESPACE: Described("the pod's own namespace"), "Namespace where Pachyderm runs.";
    PACHD_DEPLOYMENT: Value("pachd"), "The pachd Deployment: stopped first, resumed first.";
    PACHW_DEPLOYMENT: Value("pachw"), "The pachw Deployment (Pachyderm 2.5+); a missing one is fine.";
    WORKER_SELECTOR: Value("suite=pachyderm,component=worker"), "Label selector of the pipeline worker ReplicationControllers.";
    PACHD_CONFIGMAP: Value("pachd-config"), "ConfigMap holding MODE, used by PAUSE_MODE=pachyderm.";
    PAUSE_MODE: Value("scale"), "`scale` (replicas to zero), `pachyderm` (Pachyderm's own paused mode) or `none` (no cluster).";
    PAUSE_TIMEOUT: Value("5m"), "How long to wait for the paused pods to terminate.";
    RESUME_TIMEOUT: Value("10m"), "How long to wait for pachd to be ready again.";
    MAX_DOWNTIME: Value("2h"), "Longest pause: past it the capture is aborted and the cluster resumed.";
    HELM_RELEASE: Described("unset: not captured"),
        "Pachyderm's Helm release: its user-supplied values are saved with each backup (needs `list` on Secrets; sensitive).";
    LEASE_NAME: Value("pachyderm-backup"), "The coordination.k8s.io Lease that keeps runs exclusive.";
    LEASE_DURATION: Value("60s"), "How long the Lease stays valid without renewal (renewed every third of it).";
    PREFLIGHT_TIMEOUT: Value("60s"),
        "Bound on each preflight step (a database check, `pg_dump --version`, a bucket probe, the permission check), for run, restore and the drill.";
    PGHOST: Described("required (unless PGSERVICE)"), "PostgreSQL host of Pachyderm (the server itself, not pg-bouncer).";
    PGPORT: Value("5432"), "PostgreSQL port.";
    PGUSER: Described("libpq's default"), "PostgreSQL user (needs to read every table).";
    PGPASSWORD: Described("unset"), "PostgreSQL password.";
    PGSSLMODE: Value("prefer"), "libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full.";
    PGSSLROOTCERT: Described("unset"), "CA certificate file for verify-ca / verify-full (or `system`).";
    PGSSLCERT: Described("unset"), "Client certificate file (PEM) for certificate authentication, with PGSSLKEY.";
    PGSSLKEY: Described("unset"), "Private key file of PGSSLCERT; libpq refuses it unless its mode is 0600 or less (0640 or less when owned by root).";
    PG_FAMILY = "PG*": Described("unset"),
        "Every other libpq variable (PGSSLCRL, PGSERVICE, PGPASSFILE, PGCONNECT_TIMEOUT, PGOPTIONS, PGAPPNAME, PGTARGETSESSIONATTRS, PGGSSENCMODE…), passed untouched to pg_dump and to the preflight; a name libpq does not know is warned about and ignored.";
    DATABASES: Value("pachyderm,dex"), "Databases to dump, comma separated.";
    DUMP_COMPRESSION: Described("auto: zstd:1 with pg_dump 16+, else gzip level 1"),
        "pg_dump's --compress: auto, none, 0-9 (gzip levels), or gzip, lz4, zstd with an optional :level (lz4 and zstd need pg_dump 16+).";
    PG_BIN_DIR: Described("PATH"), "Directory holding pg_dump, pg_restore and psql (they must be as new as the server).";
    DUMP_RECIPIENTS: Described("unset: dumps unencrypted (warned on every run)"),
        "age public keys (age1…, comma separated) every dump is encrypted to as it streams; the backup holds no key that decrypts it.";
    SOURCE_URL: Described("required"), "Pachyderm's bucket: s3://bucket[/prefix], gs://…, az://container[/prefix], file:///dir.";
    TARGET_URL: Described("required"), "The backup bucket and prefix, same schemes.";
    AWS_FAMILY = "AWS_*": Described("unset"),
        "object_store's S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP…), and AWS_CA_BUNDLE (a PEM file of CA certificates to trust beside the system's), for every bucket.";
    GOOGLE_FAMILY = "GOOGLE_*": Described("unset"),
        "object_store's GCS keys (GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_SERVICE_ACCOUNT…), and GOOGLE_CA_BUNDLE, for every bucket.";
    AZURE_FAMILY = "AZURE_*": Described("unset"),
        "object_store's Azure keys (AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY…), and AZURE_CA_BUNDLE, for every bucket.";
    SOURCE_AWS_FAMILY = "SOURCE_AWS_*": Described("unset"), "S3 keys for the source bucket only (override AWS_*).";
    SOURCE_GOOGLE_FAMILY = "SOURCE_GOOGLE_*": Described("unset"), "GCS keys for the source bucket only.";
    SOURCE_AZURE_FAMILY = "SOURCE_AZURE_*": Described("unset"), "Azure keys for the source bucket only.";
    TARGET_AWS_FAMILY = "TARGET_AWS_*": Described("unset"), "S3 keys for the backup bucket only.";
    TARGET_GOOGLE_FAMILY = "TARGET_GOOGLE_*": Described("unset"), "GCS keys for the backup bucket only.";
    TARGET_AZURE_FAMILY = "TARGET_AZURE_*": Described("unset"), "Azure keys for the backup bucket only.";
    WORKLOAD_IDENTITY: Value("false"),
        "Buckets without keys use the platform's identity (IRSA, GKE or Azure workload identity). Also SOURCE_/TARGET_/RESTORE_ prefixed.";
    SOURCE_WORKLOAD_IDENTITY: Described("WORKLOAD_IDENTITY"), "Workload identity for the source bucket only.";
    TARGET_WORKLOAD_IDENTITY: Described("WORKLOAD_IDENTITY"), "Workload identity for the backup bucket only.";
    OBJECTS: Value("copy"), "`copy` the bucket, or `skip` it (metadata only, like `pachctl extract --no-objects`).";
    PRECOPY: Value("true"), "Copy the objects once before the pause too, so only the delta is copied while paused.";
    COPY_CONCURRENCY: Value("32"), "Parallel object transfers (1–1024).";
    COPY_MODE: Value("auto"),
        "`auto`: server-side copies (S3 CopyObject, Azure Copy Blob From URL, GCS rewrite: no object bytes through the pod) when source and backup bucket are on one service (both S3, both Azure or both GCS) and share endpoint, account/region and credentials, else streamed; `server`: server-side whenever both are on one such service; `stream`: always streamed. A refused server-side copy is streamed. `restore` decides the same way between the backup bucket and RESTORE_URL (on S3 only: Azure's and GCS' copies carry no SHA-256 to check).";
    COPY_SHARDS: Value("1"),
        "With N > 1 (at most 256), the pre-copy runs as a Kubernetes Indexed Job of N pods (`copy-shard`), made from this pod's own spec and owned by it: index i copies one contiguous key range cut at the chunks' leading hex digits (the first index also takes the keys before `chunk/`, the last those after), and the run merges their listings. Needs OBJECTS=copy, PRECOPY=true, POD_NAME and POD_NAMESPACE.";
    COPY_PARALLELISM: Described("COPY_SHARDS"), "How many of the copy Job's pods run at once (1–256).";
    PRECOPY_TIMEOUT: Described("unset: only the CronJob's activeDeadlineSeconds"),
        "Bound on the pre-copy (with COPY_SHARDS > 1, the copy Job's activeDeadlineSeconds is a minute longer: a backstop should the run die): past it the run fails before any pause, naming the unfinished shards.";
    POD_NAME: Described("unset"), "This pod's name (downward API, set by the chart): the copy Job of COPY_SHARDS copies this pod's spec and is owned by it.";
    POD_NAMESPACE: Described("unset"), "This pod's namespace (downward API, set by the chart): where the copy Job is created.";
    KEEP_LAST: Value("0"), "Keep the N newest backups.";
    KEEP_HOURLY: Value("0"), "Keep the newest backup of each of the last N hours that have one.";
    KEEP_DAILY: Value("7"), "Keep the newest backup of each of the last N days that have one.";
    KEEP_WEEKLY: Value("4"), "Keep the newest backup of each of the last N ISO weeks that have one.";
    KEEP_MONTHLY: Value("6"), "Keep the newest backup of each of the last N months that have one.";
    KEEP_YEARLY: Value("0"), "Keep the newest backup of each of the last N years that have one.";
    KEEP_WITHIN: Described("unset"), "Keep every backup younger than this duration (e.g. 3d).";
    MIN_KEEP: Value("3"), "Never keep fewer complete backups than this.";
    GC_GRACE: Value("24h"),
        "Blobs and unfinished backup folders younger than this are never swept. At least MAX_DOWNTIME + PAUSE_TIMEOUT + RESUME_TIMEOUT + 1h (3h15m with the defaults), longer than any run can last.";
    PUSHGATEWAY_URL: Described("unset: no push"), "Prometheus Pushgateway, e.g. http://pushgateway.monitoring:9091.";
    PUSHGATEWAY_USERNAME: Described("unset"), "Basic-auth user for the Pushgateway.";
    PUSHGATEWAY_PASSWORD: Described("unset"), "Basic-auth password for the Pushgateway.";
    PUSHGATEWAY_TIMEOUT: Value("10s"), "Timeout of each push; a failed push is a warning, never a failed backup.";
    CLUSTER_NAME: Described("the namespace"), "The `pachyderm_cluster` label of every metric (and of the Pushgateway grouping key), recorded in the manifest.";
    SCHEDULE: Described("unset"),
        "The CronJob's spec.schedule, read as Kubernetes reads it (5 fields, day of week 0-6 from Sunday or SUN-SAT, or @daily…), to publish when the next backup is due.";
    SCHEDULE_TIMEZONE: Described("UTC"),
        "The CronJob's spec.timeZone (an IANA name such as Europe/Paris) that SCHEDULE's times are in; unset, the kube-controller-manager's zone, taken as UTC.";
    PROGRESS_INTERVAL: Value("30s"), "Interval of the progress line during long phases.";
    LOG_FORMAT: Described("text at a terminal, else json"), "`json` (one object per line, unique keys) or `text`.";
    RUST_LOG: Value("info"), "Log filter (tracing's EnvFilter syntax).";
    RESTORE_PGHOST: Described("required for restore/drill"), "PostgreSQL host to restore (or drill) into.";
    RESTORE_PGPORT: Value("5432"), "Its port.";
    RESTORE_PGUSER: Described("libpq's default"), "Its user (must be able to create databases).";
    RESTORE_PGPASSWORD: Described("unset"), "Its password.";
    RESTORE_PGSSLMODE: Value("prefer"), "Its sslmode.";
    RESTORE_PGSSLROOTCERT: Described("unset"), "Its CA certificate file.";
    RESTORE_PGSSLCERT: Described("unset"), "Its client certificate file.";
    RESTORE_PGSSLKEY: Described("unset"), "That certificate's private key file.";
    RESTORE_PG_FAMILY = "RESTORE_PG*": Described("unset"),
        "Every other libpq variable for the restore server (RESTORE_PGSSLCRL, RESTORE_PGSERVICE…), passed without its prefix to pg_restore and psql; the PG* variables of the backup's server never reach them.";
    RESTORE_IDENTITY_FILE: Described("required to restore or drill encrypted dumps"),
        "age identity file (AGE-SECRET-KEY-1… lines) of one of the dumps' recipients; only restore and verify --drill read it.";
    RESTORE_URL: Described("required for restore"), "The bucket (and prefix) to restore the objects into.";
    RESTORE_JOBS: Value("4"),
        "pg_restore's parallel jobs (`-j`, 1–64) for a dump restored from a scratch file (restore and verify --drill); 1 streams every dump into pg_restore.";
    RESTORE_SCRATCH_LIMIT: Value("1GiB"),
        "The largest dump (as stored) downloaded to a scratch file in TMPDIR before pg_restore reads it: checked whole (SHA-256, decryption) before anything is written to the database, then restored with RESTORE_JOBS in parallel. Larger dumps stream into pg_restore, checked as they go. Bytes, with an optional KiB, MiB, GiB or TiB; 0 always streams.";
    RESTORE_AWS_FAMILY = "RESTORE_AWS_*": Described("unset"), "S3 keys for the restore bucket only.";
    RESTORE_GOOGLE_FAMILY = "RESTORE_GOOGLE_*": Described("unset"), "GCS keys for the restore bucket only.";
    RESTORE_AZURE_FAMILY = "RESTORE_AZURE_*": Described("unset"), "Azure keys for the restore bucket only.";
    RESTORE_WORKLOAD_IDENTITY: Described("WORKLOAD_IDENTITY"), "Workload identity for the restore bucket only.";
}

/// The raw environment, every value still a string. Field names are the variables'
/// names in lower case (envy's convention; a test checks them against [`VARIABLES`]);
/// the prefixed families are read apart.
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
    pub preflight_timeout: Option<String>,
    pub pghost: Option<String>,
    pub pgport: Option<String>,
    pub pguser: Option<String>,
    pub pgpassword: Option<Secret>,
    pub pgsslmode: Option<String>,
    pub pgsslrootcert: Option<String>,
    pub pgsslcert: Option<String>,
    pub pgsslkey: Option<String>,
    pub databases: Option<String>,
    pub pg_bin_dir: Option<String>,
    pub dump_recipients: Option<String>,
    pub dump_compression: Option<String>,
    pub source_url: Option<String>,
    pub target_url: Option<String>,
    pub workload_identity: Option<String>,
    pub source_workload_identity: Option<String>,
    pub target_workload_identity: Option<String>,
    pub objects: Option<String>,
    pub precopy: Option<String>,
    pub copy_concurrency: Option<String>,
    pub copy_mode: Option<String>,
    pub copy_shards: Option<String>,
    pub copy_parallelism: Option<String>,
    pub precopy_timeout: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
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
    pub schedule_timezone: Option<String>,
    pub progress_interval: Option<String>,
    pub log_format: Option<String>,
    pub rust_log: Option<String>,
    pub restore_pghost: Option<String>,
    pub restore_pgport: Option<String>,
    pub restore_pguser: Option<String>,
    pub restore_pgpassword: Option<Secret>,
    pub restore_pgsslmode: Option<String>,
    pub restore_pgsslrootcert: Option<String>,
    pub restore_pgsslcert: Option<String>,
    pub restore_pgsslkey: Option<String>,
    pub restore_identity_file: Option<String>,
    pub restore_url: Option<String>,
    pub restore_jobs: Option<String>,
    pub restore_scratch_limit: Option<String>,
    pub restore_workload_identity: Option<String>,
    /// Object-store keys: `AWS_*`, `GOOGLE_*`, `AZURE_*` and their side-prefixed forms.
    #[serde(skip)]
    pub store_keys: BTreeMap<String, Secret>,
    /// libpq variables not read as fields above (`PGSSLCRL`, `RESTORE_PGSERVICE`…), by
    /// their names as given: checked and handed to libpq by [`PgServer`].
    #[serde(skip)]
    pub libpq_keys: BTreeMap<String, Secret>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

const STORE_FAMILIES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];
const SIDES: [&str; 3] = ["SOURCE_", "TARGET_", "RESTORE_"];

/// Every environment variable libpq reads, from PostgreSQL's documentation (14 to 18,
/// "Environment Variables", and libpq's table of connection options): the fallbacks
/// of the connection parameters, the session defaults and where its files are.
pub const LIBPQ_VARIABLES: &[&str] = &[
    "PGAPPNAME",
    "PGCHANNELBINDING",
    "PGCLIENTENCODING",
    "PGCONNECT_TIMEOUT",
    "PGDATABASE",
    "PGDATESTYLE",
    "PGGEQO",
    "PGGSSDELEGATION",
    "PGGSSENCMODE",
    "PGGSSLIB",
    "PGHOST",
    "PGHOSTADDR",
    "PGKRBSRVNAME",
    "PGLOADBALANCEHOSTS",
    "PGLOCALEDIR",
    "PGMAXPROTOCOLVERSION",
    "PGMINPROTOCOLVERSION",
    "PGOPTIONS",
    "PGPASSFILE",
    "PGPASSWORD",
    "PGPORT",
    "PGREQUIREAUTH",
    "PGREQUIREPEER",
    "PGREQUIRESSL",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLCERT",
    "PGSSLCERTMODE",
    "PGSSLCOMPRESSION",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLKEY",
    "PGSSLMAXPROTOCOLVERSION",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMODE",
    "PGSSLNEGOTIATION",
    "PGSSLROOTCERT",
    "PGSSLSNI",
    "PGSYSCONFDIR",
    "PGTARGETSESSIONATTRS",
    "PGTZ",
    "PGUSER",
];

/// The libpq variables read one by one as fields of [`RawEnv`] (and with a `RESTORE_`
/// prefix); every other one is gathered into [`RawEnv::libpq_keys`].
const LIBPQ_FIELDS: [&str; 8] = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"];

/// The prefix of the restore server's libpq variables (the backup's server has none).
const RESTORE: &str = "RESTORE_";

/// Whether a name (without `RESTORE_`) is shaped like libpq's: `PG` and a letter, as
/// PGSSLCERT is and our own PG_BIN_DIR is not.
fn libpq_shaped(name: &str) -> bool {
    name.len() > 2 && name.starts_with("PG") && name.as_bytes()[2].is_ascii_uppercase()
}

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
                continue;
            }
            let libpq = name.strip_prefix(RESTORE).unwrap_or(&name);
            if libpq_shaped(libpq) && !LIBPQ_FIELDS.contains(&libpq) {
                raw.libpq_keys.insert(name, Secret(value));
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

/// How the objects reach the pool (COPY_MODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Server-side when source and target are one account on one service.
    Auto,
    /// Server-side whenever both buckets are S3's.
    Server,
    /// Always through this process.
    Stream,
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

/// A PostgreSQL server, as libpq's variables describe it. Every libpq client the
/// program runs for it (pg_dump, pg_restore, psql) gets these and no others.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// The prefix of its variables: "" for Pachyderm's server, `RESTORE_` for the
    /// restore server.
    pub prefix: &'static str,
    /// Empty when PGSERVICE names a service that gives it.
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub sslmode: String,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    /// The other libpq variables given for this server (`PGSSLCRL`, `PGSERVICE`,
    /// `PGCONNECT_TIMEOUT`…), by libpq's names, passed on untouched.
    pub libpq: BTreeMap<String, Secret>,
}

impl PgServer {
    /// The server in messages: `host:port`, and the service when one is named.
    pub fn describe(&self) -> String {
        let service = self.libpq.get("PGSERVICE").map(|s| s.expose().to_string());
        match (self.host.is_empty(), service) {
            (true, Some(service)) => format!("service {service}"),
            (false, Some(service)) => format!("{}:{} (service {service})", self.host, self.port),
            (_, None) => format!("{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub server: PgServer,
    pub databases: Vec<String>,
    pub bin_dir: Option<PathBuf>,
    /// DUMP_RECIPIENTS: every dump is encrypted to these (empty: stored in plaintext).
    pub recipients: Vec<age::x25519::Recipient>,
    /// DUMP_COMPRESSION, checked against pg_dump's version at the preflight.
    pub compression: crate::database::DumpCompression,
}

/// RESTORE_IDENTITY_FILE's age identities, which decrypt the dumps: never in a log line
/// or `Debug` output (their public keys may be shown).
#[derive(Clone)]
pub struct DumpIdentity {
    pub file: PathBuf,
    pub identities: Vec<age::x25519::Identity>,
}

impl DumpIdentity {
    /// The public keys (`age1…`) of the identities.
    pub fn recipients(&self) -> Vec<String> {
        self.identities.iter().map(|i| i.to_public().to_string()).collect()
    }
}

impl fmt::Debug for DumpIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DumpIdentity").field("file", &self.file).field("recipients", &self.recipients()).finish()
    }
}

/// A bucket: its URL and the object_store options for it (credentials included).
#[derive(Clone)]
pub struct StoreSettings {
    pub variable: &'static str,
    pub url: Url,
    pub options: BTreeMap<String, Secret>,
    /// Extra CA certificates its TLS connections trust (`AWS_CA_BUNDLE`…).
    pub ca_bundle: Option<CaBundle>,
}

/// A family of object_store configuration keys (one service's), among which the HTTP
/// client's own.
pub trait StoreKey: std::str::FromStr {
    fn client(&self) -> Option<object_store::ClientConfigKey>;
}

impl StoreKey for object_store::aws::AmazonS3ConfigKey {
    fn client(&self) -> Option<object_store::ClientConfigKey> {
        if let Self::Client(k) = self { Some(*k) } else { None }
    }
}

impl StoreKey for object_store::azure::AzureConfigKey {
    fn client(&self) -> Option<object_store::ClientConfigKey> {
        if let Self::Client(k) = self { Some(*k) } else { None }
    }
}

impl StoreKey for object_store::gcp::GoogleConfigKey {
    fn client(&self) -> Option<object_store::ClientConfigKey> {
        if let Self::Client(k) = self { Some(*k) } else { None }
    }
}

impl StoreSettings {
    /// The bucket's options that are keys of family `K` (the others are another
    /// service's, or ours).
    pub fn keyed<K: StoreKey>(&self) -> impl Iterator<Item = (K, &str)> {
        self.options.iter().filter_map(|(k, v)| Some((k.parse::<K>().ok()?, v.expose())))
    }

    /// The HTTP client's options among them (timeouts, proxy, allow_http…), and the CA
    /// certificates of the bucket's CA bundle.
    pub fn client_options<K: StoreKey>(&self) -> object_store::ClientOptions {
        let options = self.keyed::<K>().filter_map(|(k, v)| Some((k.client()?, v))).fold(object_store::ClientOptions::new(), |o, (k, v)| o.with_config(k, v));
        self.ca_bundle.iter().flat_map(|b| &b.certificates).fold(options, |o, c| o.with_root_certificate(c.clone()))
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("variable", &self.variable)
            .field("url", &self.url.as_str())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

/// CA certificates a bucket's endpoint is trusted with, beside the system's: a private
/// CA (MinIO, an on-premises S3) given as `AWS_CA_BUNDLE` (the AWS CLI's name), or
/// `GOOGLE_CA_BUNDLE` / `AZURE_CA_BUNDLE`, shared or `SOURCE_`/`TARGET_`/`RESTORE_`
/// prefixed. Read and checked with the configuration: object_store gets the
/// certificates as read then.
#[derive(Clone)]
pub struct CaBundle {
    /// The variable that named the file, e.g. `TARGET_AWS_CA_BUNDLE`.
    pub variable: String,
    pub path: PathBuf,
    pub certificates: Vec<object_store::Certificate>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle").field("variable", &self.variable).field("path", &self.path).field("certificates", &self.certificates.len()).finish()
    }
}

#[derive(Debug, Clone)]
pub struct CopySettings {
    pub objects: ObjectsMode,
    pub precopy: bool,
    pub concurrency: usize,
    pub mode: CopyMode,
    /// `run --full`: copy every object again under fresh blob keys, trusting nothing
    /// in the pool (set by the command line, not the environment).
    pub full: bool,
    /// PRECOPY_TIMEOUT.
    pub precopy_timeout: Option<Duration>,
    /// COPY_SHARDS > 1: the pre-copy as an Indexed Job.
    pub shards: Option<ShardSettings>,
}

/// The pre-copy as a Kubernetes Indexed Job (COPY_SHARDS > 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSettings {
    pub count: u32,
    pub parallelism: u32,
    /// The run's own pod (POD_NAME, POD_NAMESPACE): the Job's template and owner.
    pub pod: String,
    pub namespace: String,
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
    /// SCHEDULE in SCHEDULE_TIMEZONE: when the next backup is due.
    pub schedule: Option<Schedule>,
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
    /// Bound on each preflight step (PREFLIGHT_TIMEOUT).
    pub preflight_timeout: Duration,
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
    /// Bound on each preflight step (PREFLIGHT_TIMEOUT).
    pub preflight_timeout: Duration,
    /// RESTORE_IDENTITY_FILE, for encrypted dumps.
    pub identity: Option<DumpIdentity>,
    /// COPY_MODE: the blobs copied back server-side when the backup bucket and the
    /// restore bucket are one account's.
    pub copy_mode: CopyMode,
    /// RESTORE_JOBS, RESTORE_SCRATCH_LIMIT.
    pub scratch: Scratch,
}

/// Dumps restored from a scratch file, checked whole first, by parallel pg_restore jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    pub jobs: u32,
    /// The largest dump, as stored, taken to a scratch file (bytes).
    pub limit: u64,
}

impl Scratch {
    /// Whether a dump of `size` stored bytes goes through a scratch file.
    pub fn takes(&self, size: u64) -> bool {
        self.jobs > 1 && size <= self.limit
    }
}

/// The longest duration any variable takes: 100 years.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Collects problems while parsing, so that all of them are reported at once.
struct Check {
    problems: Vec<Problem>,
}

/// What a parse finds wrong with a value: the problem, and what was expected instead.
type Bad = (String, String);

impl Check {
    fn new() -> Self {
        Check { problems: Vec::new() }
    }

    fn fail(&mut self, variable: &str, problem: impl Into<String>, expected: impl Into<String>) {
        self.problems.push(Problem::new(variable, problem, expected));
    }

    /// The setting `v` gives: its value, or when it is unset its default (a
    /// [`Unset::Value`], parsed by the same `parse`). A bad value is a problem naming
    /// `v`, and the default stands in for it, so that the checks combining settings
    /// (the GC_GRACE floor) still see sane ones.
    fn setting<T>(&mut self, v: &Variable, value: &Option<String>, parse: impl Fn(&str) -> Result<T, Bad>) -> T {
        let default = || {
            let text = v.default_value().unwrap_or_else(|| panic!("{} has no default value: read it with `optional`", v.name));
            // Unreachable: the test `every_default_is_what_an_unset_variable_means`
            // parses every default with its variable's own parse.
            parse(text).unwrap_or_else(|(problem, _)| panic!("the default of {}: {problem}", v.name))
        };
        match value {
            None => default(),
            Some(text) => parse(text.trim()).unwrap_or_else(|(problem, expected)| {
                self.fail(v.name, problem, expected);
                default()
            }),
        }
    }

    /// The setting of a variable without a default value: `None` when it is unset, or
    /// bad (a problem naming it).
    fn optional<T>(&mut self, v: &Variable, value: &Option<String>, parse: impl Fn(&str) -> Result<T, Bad>) -> Option<T> {
        match parse(value.as_deref()?.trim()) {
            Ok(t) => Some(t),
            Err((problem, expected)) => {
                self.fail(v.name, problem, expected);
                None
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() { Ok(value) } else { Err(ConfigError(self.problems)) }
    }
}

/// The parses of [`Check::setting`] and [`Check::optional`]: a value, trimmed, to a
/// setting, or what is wrong with it.
mod parse {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    use super::{Bad, MAX_DURATION, is_dns_label, is_dns_subdomain};

    pub fn text(v: &str) -> Result<String, Bad> {
        if v.is_empty() {
            return Err(("is empty".into(), "a non-empty value, or the variable unset for the default".into()));
        }
        Ok(v.to_string())
    }

    /// A Kubernetes object name.
    pub fn name(v: &str) -> Result<String, Bad> {
        if !is_dns_label(v) && !is_dns_subdomain(v) {
            return Err((format!("{v:?} is not a Kubernetes object name"), "lower-case letters, digits, '-' and '.', at most 253 characters".into()));
        }
        Ok(v.to_string())
    }

    /// A positive duration of at most 100 years (past what clock arithmetic holds).
    pub fn duration(v: &str) -> Result<Duration, Bad> {
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => Err((format!("{v:?} is zero"), "a positive duration such as 90s, 10m or 2h".into())),
            Ok(d) if d > MAX_DURATION => Err((format!("{v:?} is too long"), "a duration of at most 100 years, such as 90s, 10m or 2h".into())),
            Ok(d) => Ok(d),
            Err(e) => Err((format!("{v:?} is not a duration ({e})"), "a duration such as 90s, 10m or 2h".into())),
        }
    }

    /// A size in bytes: a whole number with an optional binary unit (KiB, MiB, GiB, TiB,
    /// or Kubernetes' Ki, Mi, Gi, Ti, or K, M, G, T). Decimal units (GB) are refused
    /// rather than guessed.
    pub fn bytes(v: &str) -> Result<u64, Bad> {
        let expected = || "bytes, with an optional unit: 0, 512MiB, 1GiB, 2Ti".to_string();
        let t = v.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "ki" | "kib" => 10,
            "m" | "mi" | "mib" => 20,
            "g" | "gi" | "gib" => 30,
            "t" | "ti" | "tib" => 40,
            _ => return Err((format!("{v:?} is not a size"), expected())),
        };
        let n: u64 = digits.parse().map_err(|_| (format!("{v:?} is not a size"), expected()))?;
        n.checked_mul(1u64 << shift).ok_or_else(|| (format!("{v:?} is too large"), expected()))
    }

    /// A whole number in `range`.
    pub fn whole(range: RangeInclusive<u64>) -> impl Fn(&str) -> Result<u64, Bad> {
        move |v| {
            let expected = || format!("a whole number from {} to {}", range.start(), range.end());
            match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                Ok(n) => Err((format!("{n} is out of range"), expected())),
                Err(_) => Err((format!("{v:?} is not a whole number"), expected())),
            }
        }
    }

    pub fn boolean(v: &str) -> Result<bool, Bad> {
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err((format!("{v:?} is not a boolean"), "true or false".into())),
        }
    }

    /// One of `choices`, by name (case-insensitive).
    pub fn choice<T: Copy>(choices: &'static [(&'static str, T)]) -> impl Fn(&str) -> Result<T, Bad> {
        move |v| {
            let wanted = v.to_ascii_lowercase();
            match choices.iter().find(|(name, _)| *name == wanted) {
                Some((_, t)) => Ok(*t),
                None => {
                    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                    Err((format!("{v:?} is not a known value"), format!("one of {}", names.join(", "))))
                }
            }
        }
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

/// One server's libpq variables read as fields, each with its value as given: the
/// backup's server (`PG*`) or the restore server (`RESTORE_PG*`).
struct PgRaw<'a> {
    host: (&'static Variable, &'a Option<String>),
    port: (&'static Variable, &'a Option<String>),
    user: &'a Option<String>,
    password: &'a Option<Secret>,
    sslmode: (&'static Variable, &'a Option<String>),
    sslrootcert: (&'static Variable, &'a Option<String>),
    sslcert: (&'static Variable, &'a Option<String>),
    sslkey: (&'static Variable, &'a Option<String>),
}

fn pg_raw<'a>(raw: &'a RawEnv, prefix: &str) -> PgRaw<'a> {
    if prefix == RESTORE {
        PgRaw {
            host: (&vars::RESTORE_PGHOST, &raw.restore_pghost),
            port: (&vars::RESTORE_PGPORT, &raw.restore_pgport),
            user: &raw.restore_pguser,
            password: &raw.restore_pgpassword,
            sslmode: (&vars::RESTORE_PGSSLMODE, &raw.restore_pgsslmode),
            sslrootcert: (&vars::RESTORE_PGSSLROOTCERT, &raw.restore_pgsslrootcert),
            sslcert: (&vars::RESTORE_PGSSLCERT, &raw.restore_pgsslcert),
            sslkey: (&vars::RESTORE_PGSSLKEY, &raw.restore_pgsslkey),
        }
    } else {
        PgRaw {
            host: (&vars::PGHOST, &raw.pghost),
            port: (&vars::PGPORT, &raw.pgport),
            user: &raw.pguser,
            password: &raw.pgpassword,
            sslmode: (&vars::PGSSLMODE, &raw.pgsslmode),
            sslrootcert: (&vars::PGSSLROOTCERT, &raw.pgsslrootcert),
            sslcert: (&vars::PGSSLCERT, &raw.pgsslcert),
            sslkey: (&vars::PGSSLKEY, &raw.pgsslkey),
        }
    }
}

/// libpq's sslmode values.
fn sslmode(v: &str) -> Result<String, Bad> {
    const MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];
    if !MODES.contains(&v) {
        return Err((format!("{v:?} is not an sslmode"), format!("one of {}", MODES.join(", "))));
    }
    Ok(v.to_string())
}

fn pg_server(check: &mut Check, raw: &RawEnv, prefix: &'static str) -> Option<PgServer> {
    let given = pg_raw(raw, prefix);
    // The family first: PGSERVICE may stand in for PGHOST.
    let libpq = libpq_family(check, raw, prefix);
    let (host_var, host) = given.host;
    let host = match host {
        Some(h) if !h.trim().is_empty() => h.trim().to_string(),
        Some(_) => {
            check.fail(host_var.name, "is empty", "the PostgreSQL host name or address");
            return None;
        }
        // libpq takes the host from the service file.
        None if libpq.contains_key("PGSERVICE") => String::new(),
        None => {
            check.fail(
                host_var.name,
                "is not set",
                format!("the PostgreSQL host name or address (the server itself, not pg-bouncer), or {prefix}PGSERVICE naming a service that gives it"),
            );
            return None;
        }
    };
    let port = check.setting(given.port.0, given.port.1, parse::whole(1..=65535)) as u16;
    let sslmode = check.setting(given.sslmode.0, given.sslmode.1, sslmode);
    // The TLS files, checked now: libpq silently goes on without a client certificate
    // whose file is missing, and the server's refusal would not say why.
    let file = |check: &mut Check, (v, value): (&Variable, &Option<String>), expected: &str| -> Option<String> {
        let value = value.as_ref()?.clone();
        let libpq = v.name.strip_prefix(prefix).unwrap_or(v.name);
        // `system` (libpq 16+): the system's CAs; `engine:key`: an OpenSSL engine's key.
        let special = (libpq == "PGSSLROOTCERT" && value == "system") || (libpq == "PGSSLKEY" && is_engine_key(&value));
        if !special && let Err(problem) = readable(&value, false) {
            check.fail(v.name, problem, expected);
        }
        Some(value)
    };
    let sslrootcert = file(check, given.sslrootcert, "a readable PEM file of the CA certificates that signed the server's certificate, or system");
    let sslcert = file(check, given.sslcert, "a readable PEM file of the client certificate (with its key in PGSSLKEY)");
    let sslkey = file(check, given.sslkey, "a readable file of the client certificate's private key (mode 0600, or 0640 owned by root)");
    Some(PgServer {
        prefix,
        host,
        port,
        user: given.user.as_ref().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()),
        password: given.password.clone(),
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        libpq,
    })
}

/// libpq's `engine:key` form of sslkey (an OpenSSL engine), which is not a path; a
/// Windows drive letter (`C:\...`) is.
fn is_engine_key(value: &str) -> bool {
    let b = value.as_bytes();
    value.contains(':') && !(b.len() > 1 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

/// A path that can be read now: a file (or a directory, for `dir`).
fn readable(path: &str, dir: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{path} cannot be read ({e})"))?;
    if dir {
        if !meta.is_dir() {
            return Err(format!("{path} is not a directory"));
        }
        std::fs::read_dir(path).map_err(|e| format!("{path} cannot be read ({e})"))?;
    } else {
        if meta.is_dir() {
            return Err(format!("{path} is a directory, not a file"));
        }
        std::fs::File::open(path).map_err(|e| format!("{path} cannot be read ({e})"))?;
    }
    Ok(())
}

/// The libpq variables of one server besides those read as fields: `PG*` for
/// Pachyderm's server, `RESTORE_PG*` (given to libpq without the prefix) for the
/// restore server. A name libpq does not know is warned about and left out (libpq
/// would ignore it: a typo must not pass unnoticed); the paths are checked now, and no
/// value may hold a control character.
fn libpq_family(check: &mut Check, raw: &RawEnv, prefix: &str) -> BTreeMap<String, Secret> {
    let mut family = BTreeMap::new();
    for (name, value) in &raw.libpq_keys {
        let Some(libpq) = name.strip_prefix(prefix) else { continue };
        if prefix.is_empty() && name.starts_with(RESTORE) {
            continue;
        }
        if !LIBPQ_VARIABLES.contains(&libpq) {
            tracing::warn!(variable = %name, "{name} is not a libpq variable: it is ignored");
            continue;
        }
        if libpq == "PGDATABASE" {
            tracing::warn!(variable = %name, "{name} has no effect: every database is named explicitly (DATABASES, or the backup's manifest)");
            continue;
        }
        if let Err((problem, expected)) = check_libpq_value(libpq, value.expose()) {
            check.fail(name, problem, expected);
            continue;
        }
        family.insert(libpq.to_string(), value.clone());
    }
    family
}

/// What libpq needs of a variable's value that can be checked before connecting:
/// files and directories that exist, a whole number of seconds. The rest (sslcrl's
/// content, gssencmode's values…) is libpq's to check, and the preflight runs libpq.
fn check_libpq_value(libpq: &str, v: &str) -> Result<(), (String, String)> {
    if v.chars().any(char::is_control) {
        return Err((
            "contains a control character (a line break at the end of a Secret's value?)".into(),
            "the value on one line, without control characters".into(),
        ));
    }
    let path = |dir: bool, expected: &str| readable(v, dir).map_err(|p| (p, expected.to_string()));
    match libpq {
        "PGSSLCRL" => path(false, "a readable PEM file of certificate revocation lists"),
        "PGPASSFILE" => path(false, "a readable password file (hostname:port:database:username:password lines)"),
        "PGSERVICEFILE" => path(false, "a readable connection service file"),
        "PGSSLCRLDIR" => path(true, "a readable directory of certificate revocation lists"),
        "PGSYSCONFDIR" => path(true, "a readable directory (holding pg_service.conf)"),
        "PGCONNECT_TIMEOUT" if v.trim().parse::<i32>().is_ok() => Ok(()),
        "PGCONNECT_TIMEOUT" => Err((format!("{v:?} is not a whole number of seconds"), "a whole number of seconds, such as 10".into())),
        _ => Ok(()),
    }
}

/// Builds one side's bucket settings: URL, then the object_store options from the
/// unprefixed families overridden by the side's prefixed ones. The options' values are
/// checked once per variable by [`check_store_keys`], not here.
///
/// `workload_identity` is `None` when the variable deciding it is bad: that problem is
/// reported once, by name, and a bucket without keys is then not reported again as
/// having no credentials.
fn store(
    check: &mut Check,
    v: &'static Variable,
    side: &str,
    url: &Option<String>,
    raw: &RawEnv,
    workload_identity: Option<bool>,
    required: bool,
) -> Option<StoreSettings> {
    let variable = v.name;
    // Unknown: judged as if set, so that the bad variable is the one problem reported.
    let workload_identity = workload_identity.unwrap_or(true);
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
    let options = store_options(raw, side);
    let family = StoreFamily::of_scheme(url.scheme());
    let effective = family.map(|f| effective_options(&options, f)).unwrap_or_default();
    // object_store's timeout covers a whole request, body included: its 30 s default
    // fails a large object on a slow link, or a slow listing page. 5 minutes, unless set.
    let mut options = options;
    if !effective.contains_key("timeout") {
        options.insert("timeout".to_string(), Secret::new("300s"));
    }
    // SigV4 hashes every body for the signature, and the copy hashes it again for its
    // own SHA-256: over TLS the transport protects the body, so requests sign their
    // headers only (UNSIGNED-PAYLOAD), unless AWS_UNSIGNED_PAYLOAD says otherwise. A
    // plain-HTTP endpoint keeps signed bodies: there the signature is all that stops a
    // body changed on the way to the store.
    if matches!(url.scheme(), "s3" | "s3a") && !effective.contains_key("aws_unsigned_payload") && s3_over_tls(&effective) {
        options.insert("aws_unsigned_payload".to_string(), Secret::new("true"));
    }
    let has = |keys: &[&str]| keys.iter().any(|k| effective.contains_key(*k));
    let truthy = |key: &str| effective.get(key).is_some_and(|v| parse_store_bool(v) == Some(true));
    let no_credentials = |check: &mut Check, what: &str| {
        check.fail(
            variable,
            format!("{} has no credentials", url.scheme()),
            format!("{what} (shared, or {side}-prefixed for this bucket only), or {side}WORKLOAD_IDENTITY=true / WORKLOAD_IDENTITY=true to use the platform's identity"),
        )
    };
    let bucket = url.host_str().unwrap_or("");
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) || !url.path().starts_with('/') {
                check.fail(variable, format!("{text:?} is not an absolute local path"), "file:///absolute/dir");
            }
        }
        "s3" | "s3a" | "gs" if bucket.is_empty() => {
            check.fail(variable, format!("{text:?} names no bucket"), format!("{}://bucket[/prefix]", url.scheme()));
        }
        "s3" | "s3a" | "gs" if !valid_bucket_name(bucket) => {
            check.fail(
                variable,
                format!("{text:?}: {bucket:?} is not a bucket name"),
                "a bucket name: letters, digits, '-', '_' and '.', at most 255 characters",
            );
        }
        "s3" | "s3a" => {
            let key = has(&["aws_access_key_id"]);
            let secret = has(&["aws_secret_access_key"]);
            if key != secret {
                check.fail(variable, "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set", "both, or neither");
            } else if !key
                && !workload_identity
                && !truthy("aws_skip_signature")
                && !has(&["aws_web_identity_token_file", "aws_container_credentials_full_uri", "aws_container_credentials_relative_uri"])
            {
                no_credentials(check, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
            }
        }
        "gs" => {
            if !workload_identity
                && !truthy("google_skip_signature")
                && !has(&["google_service_account", "google_service_account_key", "google_application_credentials"])
            {
                no_credentials(check, "GOOGLE_SERVICE_ACCOUNT_KEY or GOOGLE_SERVICE_ACCOUNT (a key file)");
            }
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let container = if url.username().is_empty() { bucket } else { url.username() };
            if container.is_empty() {
                check.fail(variable, format!("{text:?} names no container"), "az://container[/prefix]");
            } else if container.len() > 63 || !container.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                check.fail(
                    variable,
                    format!("{text:?}: {container:?} is not a container name"),
                    "a container name: letters, digits and '-', at most 63 characters",
                );
            }
            let emulator = truthy("azure_storage_use_emulator");
            if !emulator && url.username().is_empty() && !has(&["azure_storage_account_name"]) {
                check.fail(variable, "az has no storage account", "AZURE_STORAGE_ACCOUNT_NAME");
            }
            if !workload_identity
                && !emulator
                && !truthy("azure_skip_signature")
                && !has(&[
                    "azure_storage_account_key",
                    "azure_storage_sas_key",
                    "azure_storage_client_secret",
                    "azure_federated_token_file",
                    "azure_storage_token",
                ])
            {
                no_credentials(check, "AZURE_STORAGE_ACCOUNT_KEY or a SAS token");
            }
        }
        other => {
            check.fail(variable, format!("scheme {other:?} is not supported"), "s3://, gs://, az:// or file://");
        }
    }
    let ca_bundle = family.and_then(|f| ca_bundle(check, raw, side, f));
    Some(StoreSettings { variable, url, options, ca_bundle })
}

/// The CA bundle a bucket of `family` on `side` trusts: the side's own variable, else
/// the shared one, read and checked now (a problem names the variable, once).
fn ca_bundle(check: &mut Check, raw: &RawEnv, side: &str, family: StoreFamily) -> Option<CaBundle> {
    let shared = format!("{}CA_BUNDLE", family.prefix());
    let (variable, value) = raw.store_keys.get_key_value(&format!("{side}{shared}")).or_else(|| raw.store_keys.get_key_value(&shared))?;
    match load_ca_bundle(value.expose()) {
        Ok(certificates) => Some(CaBundle { variable: variable.clone(), path: PathBuf::from(value.expose()), certificates }),
        Err((problem, expected)) => {
            if !check.problems.iter().any(|p| p.variable == *variable) {
                check.fail(variable, problem, expected);
            }
            None
        }
    }
}

/// Reads a CA bundle as object_store will use it: PEM certificates that a TLS client
/// accepts as roots (a client is built with them, as every store's will be).
pub fn load_ca_bundle(path: &str) -> Result<Vec<object_store::Certificate>, (String, String)> {
    use object_store::client::{ClientOptions, HttpConnector, ReqwestConnector};
    const EXPECTED: &str = "a PEM file of the CA certificates (-----BEGIN CERTIFICATE-----) that signed the bucket endpoint's certificate";
    let err = |problem: String| Err((problem, EXPECTED.to_string()));
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return err(format!("{path} is a directory, not a file")),
        Ok(m) if m.len() > 16 * 1024 * 1024 => return err(format!("{path} is too large for a CA bundle ({} bytes)", m.len())),
        Ok(_) => {}
        Err(e) => return err(format!("{path} cannot be read ({e})")),
    }
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => return err(format!("{path} cannot be read ({e})")),
    };
    let certificates = match object_store::Certificate::from_pem_bundle(&pem) {
        Ok(c) if c.is_empty() => return err(format!("{path} holds no PEM certificate")),
        Ok(c) => c,
        Err(e) => return err(format!("{path} is not a PEM certificate bundle ({e})")),
    };
    let options = certificates.iter().fold(ClientOptions::new(), |o, c| o.with_root_certificate(c.clone()));
    if let Err(e) = ReqwestConnector::default().connect(&options) {
        return err(format!("{path} holds a certificate that cannot be trusted as a CA ({})", crate::error_chain(&e)));
    }
    Ok(certificates)
}

/// S3 and GCS bucket names (and the legacy S3 forms): what can sit in a URL's host and
/// path unescaped.
fn valid_bucket_name(b: &str) -> bool {
    (1..=255).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// Every variable name of the object_store families object_store 0.14 knows, unprefixed
/// (each is also read with a SOURCE_, TARGET_ or RESTORE_ prefix). The names of the HTTP
/// client's options (`*_TIMEOUT`, `*_PROXY_URL`…) exist in every family.
pub fn store_key_names() -> Vec<String> {
    const AWS: &[&str] = &[
        "ACCESS_KEY_ID",
        "SECRET_ACCESS_KEY",
        "DEFAULT_REGION",
        "REGION",
        "BUCKET",
        "BUCKET_NAME",
        "ENDPOINT_URL",
        "ENDPOINT",
        "ENDPOINT_URL_S3",
        "SESSION_TOKEN",
        "TOKEN",
        "VIRTUAL_HOSTED_STYLE_REQUEST",
        "S3_EXPRESS",
        "IMDSV1_FALLBACK",
        "METADATA_ENDPOINT",
        "UNSIGNED_PAYLOAD",
        "CHECKSUM_ALGORITHM",
        "CONTAINER_CREDENTIALS_RELATIVE_URI",
        "CONTAINER_CREDENTIALS_FULL_URI",
        "CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "WEB_IDENTITY_TOKEN_FILE",
        "ROLE_ARN",
        "ROLE_SESSION_NAME",
        "ENDPOINT_URL_STS",
        "SKIP_SIGNATURE",
        "COPY_IF_NOT_EXISTS",
        "CONDITIONAL_PUT",
        "DISABLE_TAGGING",
        "DISABLE_BULK_DELETE",
        "REQUEST_PAYER",
        "SERVER_SIDE_ENCRYPTION",
        "SSE_KMS_KEY_ID",
        "SSE_BUCKET_KEY_ENABLED",
        "SSE_CUSTOMER_KEY_BASE64",
    ];
    const AZURE: &[&str] = &[
        "STORAGE_ACCOUNT_KEY",
        "STORAGE_ACCESS_KEY",
        "STORAGE_MASTER_KEY",
        "STORAGE_ACCOUNT_NAME",
        "STORAGE_CLIENT_ID",
        "CLIENT_ID",
        "STORAGE_CLIENT_SECRET",
        "CLIENT_SECRET",
        "STORAGE_TENANT_ID",
        "STORAGE_AUTHORITY_ID",
        "TENANT_ID",
        "AUTHORITY_ID",
        "STORAGE_AUTHORITY_HOST",
        "AUTHORITY_HOST",
        "STORAGE_SAS_KEY",
        "STORAGE_SAS_TOKEN",
        "STORAGE_TOKEN",
        "STORAGE_USE_EMULATOR",
        "USE_FABRIC_ENDPOINT",
        "STORAGE_ENDPOINT",
        "ENDPOINT",
        "MSI_ENDPOINT",
        "IDENTITY_ENDPOINT",
        "OBJECT_ID",
        "MSI_RESOURCE_ID",
        "FEDERATED_TOKEN_FILE",
        "USE_AZURE_CLI",
        "SKIP_SIGNATURE",
        "CONTAINER_NAME",
        "DISABLE_TAGGING",
        "FABRIC_TOKEN_SERVICE_URL",
        "FABRIC_WORKLOAD_HOST",
        "FABRIC_SESSION_TOKEN",
        "FABRIC_CLUSTER_IDENTIFIER",
        "CREDENTIAL_TYPE",
        "STORAGE_ENCRYPTION_KEY",
    ];
    const GOOGLE: &[&str] = &[
        "SERVICE_ACCOUNT",
        "SERVICE_ACCOUNT_PATH",
        "SERVICE_ACCOUNT_KEY",
        "BUCKET",
        "BUCKET_NAME",
        "BASE_URL",
        "APPLICATION_CREDENTIALS",
        "BEARER_TOKEN",
        "SKIP_SIGNATURE",
    ];
    const CLIENT: &[&str] = &[
        "ALLOW_HTTP",
        "ALLOW_INVALID_CERTIFICATES",
        "DISABLE_SYSTEM_CERTIFICATES",
        "CONNECT_TIMEOUT",
        "DEFAULT_CONTENT_TYPE",
        "HTTP1_ONLY",
        "HTTP2_ONLY",
        "HTTP2_KEEP_ALIVE_INTERVAL",
        "HTTP2_KEEP_ALIVE_TIMEOUT",
        "HTTP2_KEEP_ALIVE_WHILE_IDLE",
        "HTTP2_MAX_FRAME_SIZE",
        "POOL_IDLE_TIMEOUT",
        "POOL_MAX_IDLE_PER_HOST",
        "PROXY_URL",
        "PROXY_CA_CERTIFICATE",
        "PROXY_EXCLUDES",
        "RANDOMIZE_ADDRESSES",
        "READ_TIMEOUT",
        "TIMEOUT",
        "USER_AGENT",
    ];
    let mut names = Vec::new();
    for (family, keys) in [("AWS_", AWS), ("AZURE_", AZURE), ("GOOGLE_", GOOGLE)] {
        for key in keys.iter().chain(CLIENT) {
            let name = format!("{family}{key}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

// ------------------------------------------------------------------ object_store options

/// An object_store key family, by the prefix of its variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StoreFamily {
    Aws,
    Google,
    Azure,
}

impl StoreFamily {
    /// The prefix of the family's variables: `AWS_`, `GOOGLE_` or `AZURE_`.
    fn prefix(self) -> &'static str {
        match self {
            StoreFamily::Aws => "AWS_",
            StoreFamily::Google => "GOOGLE_",
            StoreFamily::Azure => "AZURE_",
        }
    }

    /// The family of a lower-case, unprefixed key such as `aws_endpoint`.
    fn of_key(key: &str) -> Option<Self> {
        if key.starts_with("aws_") {
            Some(StoreFamily::Aws)
        } else if key.starts_with("google_") {
            Some(StoreFamily::Google)
        } else if key.starts_with("azure_") {
            Some(StoreFamily::Azure)
        } else {
            None
        }
    }

    /// The family whose keys a bucket URL's store reads (none for `file://`).
    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "s3" | "s3a" => Some(StoreFamily::Aws),
            "gs" => Some(StoreFamily::Google),
            "az" | "azure" | "abfs" | "abfss" | "adl" => Some(StoreFamily::Azure),
            _ => None,
        }
    }

    /// The key's canonical name as this family's object_store builder parses it (so
    /// `aws_endpoint_url` is `aws_endpoint`, `aws_timeout` is `timeout`), or `None` when
    /// the builder does not know it and would silently ignore it.
    fn canonical(self, key: &str) -> Option<String> {
        use std::str::FromStr;
        match self {
            StoreFamily::Aws => object_store::aws::AmazonS3ConfigKey::from_str(key).ok().map(|k| k.as_ref().to_string()),
            StoreFamily::Google => object_store::gcp::GoogleConfigKey::from_str(key).ok().map(|k| k.as_ref().to_string()),
            StoreFamily::Azure => object_store::azure::AzureConfigKey::from_str(key).ok().map(|k| k.as_ref().to_string()),
        }
    }
}

/// Whether an S3 bucket is reached over TLS: AWS itself (no endpoint), or an `https://`
/// endpoint.
fn s3_over_tls(effective: &BTreeMap<String, String>) -> bool {
    effective.get("aws_endpoint").is_none_or(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
}

/// One side's object_store options: the known keys of the shared families, then the
/// side's own, which replace a shared key under any of its names (`TARGET_AWS_ENDPOINT`
/// replaces `AWS_ENDPOINT_URL` too). Keys object_store does not know are left out (it
/// would ignore them; [`check_store_keys`] warns about them).
fn store_options(raw: &RawEnv, side: &str) -> BTreeMap<String, Secret> {
    let known = |key: &str| StoreFamily::of_key(key).and_then(|f| Some((f, f.canonical(key)?)));
    let mut options = BTreeMap::new();
    for (name, value) in &raw.store_keys {
        let key = name.to_ascii_lowercase();
        if known(&key).is_some() {
            options.insert(key, value.clone());
        }
    }
    for (name, value) in &raw.store_keys {
        let Some(rest) = name.strip_prefix(side) else { continue };
        let key = rest.to_ascii_lowercase();
        let Some(this) = known(&key) else { continue };
        options.retain(|k, _| known(k).as_ref() != Some(&this));
        options.insert(key, value.clone());
    }
    options
}

/// What a store of `family` ends up configured with: canonical key → value, the later
/// key winning as in object_store's own fold over the options (in their map order).
fn effective_options(options: &BTreeMap<String, Secret>, family: StoreFamily) -> BTreeMap<String, String> {
    options.iter().filter_map(|(k, v)| Some((family.canonical(k)?, v.expose().to_string()))).collect()
}

/// object_store's boolean syntax (its `Parse for bool`): no trimming.
pub(crate) fn parse_store_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// How object_store uses an option's value, hence what it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptionKind {
    /// Free text (a secret, a path, a query parameter): no control characters.
    Text,
    /// A PEM certificate: several lines.
    Multiline,
    /// Sent in an HTTP header: printable ASCII.
    Header,
    /// Part of a host name or a URL path, and of a header: letters, digits, `-_.`.
    HostLabel,
    /// An http(s) URL requests are sent to.
    HttpUrl,
    /// A proxy URL.
    ProxyUrl,
    /// A path appended to the ECS credentials address.
    RelativeUri,
    Bool,
    Duration,
    Count,
    /// HTTP/2 frame size: 16 KiB to 16 MiB - 1 (h2 asserts it).
    FrameSize,
    Choice(&'static [&'static str]),
    ChoiceIgnoringCase(&'static [&'static str]),
    /// Base64, any length.
    Base64,
    /// Base64 of a 256-bit key.
    Base64Key256,
    CopyIfNotExists,
    ConditionalPut,
    /// A GCS service-account key file's JSON.
    ServiceAccountKey,
    /// The path of such a file (object_store reads it when building the store).
    ServiceAccountFile,
}

/// The kind of an option, by its canonical name (see [`StoreFamily::canonical`]); read
/// off object_store 0.14's builders and the requests they make. An option not listed is
/// free text.
fn option_kind(canonical: &str) -> OptionKind {
    use OptionKind::*;
    match canonical {
        // The HTTP client's options, in every family.
        "allow_http"
        | "allow_invalid_certificates"
        | "disable_system_certificates"
        | "http1_only"
        | "http2_only"
        | "http2_keep_alive_while_idle"
        | "randomize_addresses" => Bool,
        "connect_timeout" | "http2_keep_alive_interval" | "http2_keep_alive_timeout" | "pool_idle_timeout" | "read_timeout" | "timeout" => Duration,
        "pool_max_idle_per_host" => Count,
        "http2_max_frame_size" => FrameSize,
        "default_content_type" | "user_agent" => Header,
        "proxy_url" => ProxyUrl,
        "proxy_ca_certificate" => Multiline,
        // S3
        "aws_access_key_id" | "aws_session_token" | "aws_sse_kms_key_id" => Header,
        "aws_region" | "aws_default_region" => HostLabel,
        "aws_endpoint" | "aws_endpoint_url_s3" | "aws_metadata_endpoint" | "aws_container_credentials_full_uri" | "aws_endpoint_url_sts" => HttpUrl,
        "aws_container_credentials_relative_uri" => RelativeUri,
        "aws_imdsv1_fallback"
        | "aws_virtual_hosted_style_request"
        | "aws_s3_express"
        | "aws_unsigned_payload"
        | "aws_skip_signature"
        | "aws_disable_tagging"
        | "aws_disable_bulk_delete"
        | "aws_request_payer"
        | "aws_sse_bucket_key_enabled" => Bool,
        "aws_checksum_algorithm" => ChoiceIgnoringCase(&["sha256", "crc64nvme"]),
        "aws_server_side_encryption" => Choice(&["AES256", "aws:kms", "aws:kms:dsse", "sse-c"]),
        "aws_sse_customer_key_base64" => Base64Key256,
        "aws_copy_if_not_exists" => CopyIfNotExists,
        "aws_conditional_put" => ConditionalPut,
        // Azure
        "azure_storage_account_name" | "azure_storage_tenant_id" => HostLabel,
        "azure_storage_account_key" => Base64,
        "azure_storage_token" => Header,
        "azure_storage_authority_host" | "azure_storage_endpoint" | "azure_msi_endpoint" | "azure_fabric_token_service_url" => HttpUrl,
        "azure_storage_use_emulator" | "azure_use_fabric_endpoint" | "azure_use_azure_cli" | "azure_skip_signature" | "azure_disable_tagging" => Bool,
        "azure_credential_type" => {
            Choice(&["auto", "bearer_token", "access_key", "client_secret", "workload_identity", "sas_token", "azure_cli", "managed_identity"])
        }
        "azure_storage_encryption_key" => Base64Key256,
        // GCS
        "google_service_account_key" => ServiceAccountKey,
        "google_service_account" => ServiceAccountFile,
        "google_base_url" => HttpUrl,
        "google_bearer_token" => Header,
        "google_skip_signature" => Bool,
        _ => Text,
    }
}

/// Checks one option's value as object_store will use it: what it would refuse when
/// building the store, and what would make it panic later (a request it cannot build,
/// a header it cannot carry). `Err((problem, expected))`; values are never echoed
/// (they may be secrets).
fn check_store_value(kind: OptionKind, v: &str) -> Result<(), (String, String)> {
    use OptionKind::*;
    let err = |problem: &str, expected: &str| Err((problem.to_string(), expected.to_string()));
    if kind != Multiline && kind != ServiceAccountKey && v.chars().any(char::is_control) {
        return err("contains a control character (a line break at the end of a Secret's value?)", "the value on one line, without control characters");
    }
    let header_safe = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    match kind {
        Text | Multiline => Ok(()),
        Header if header_safe(v) => Ok(()),
        Header => err("contains characters an HTTP header cannot carry", "printable ASCII (the value is sent in an HTTP header)"),
        HostLabel if !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => Ok(()),
        HostLabel => err("is not a name that can be part of a host name", "letters, digits, '-', '_' or '.', such as us-east-1"),
        HttpUrl => check_http_url(v).map_err(|p| (p, "an http(s) URL such as https://host:9000, with nothing after the path".to_string())),
        ProxyUrl => check_proxy_url(v).map_err(|p| (p, "a proxy URL such as http://proxy:3128".to_string())),
        RelativeUri => {
            let full = format!("http://169.254.170.2{v}");
            if v.starts_with('/') && check_request_uri(&full).is_ok() { Ok(()) } else { err("is not a URL path", "a path such as /v2/credentials/id") }
        }
        Bool if parse_store_bool(v).is_some() => Ok(()),
        Bool => err("is not a boolean", "true or false (or 1/0, yes/no, on/off)"),
        Duration => match humantime::parse_duration(v) {
            Ok(_) => Ok(()),
            Err(e) => Err((format!("is not a duration ({e})"), "a duration such as 30s, 5m or 1h".to_string())),
        },
        Count if v.parse::<usize>().is_ok() => Ok(()),
        Count => err("is not a whole number", "a whole number such as 16"),
        FrameSize if v.parse::<u32>().is_ok_and(|n| (16_384..=16_777_215).contains(&n)) => Ok(()),
        FrameSize => err("is not an HTTP/2 frame size", "a whole number from 16384 to 16777215"),
        Choice(names) if names.contains(&v) => Ok(()),
        ChoiceIgnoringCase(names) if names.contains(&v.to_lowercase().as_str()) => Ok(()),
        Choice(names) | ChoiceIgnoringCase(names) => Err(("is not a known value".to_string(), format!("one of {}", names.join(", ")))),
        Base64 | Base64Key256 => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(v) {
                Ok(key) if kind == Base64Key256 && key.len() != 32 => {
                    Err((format!("decodes to {} bytes", key.len()), "the base64 encoding of a 256-bit (32-byte) key".to_string()))
                }
                Ok(_) if header_safe(v) => Ok(()),
                _ => err("is not base64", "standard base64, as the provider gives it"),
            }
        }
        ConditionalPut if matches!(v.trim(), "etag" | "disabled") => Ok(()),
        ConditionalPut => err("is not a known value", "etag or disabled"),
        CopyIfNotExists => {
            check_copy_if_not_exists(v).map_err(|p| (p, "multipart, header:<name>:<value> or header-with-status:<name>:<value>:<status>".to_string()))
        }
        ServiceAccountKey => {
            check_service_account_key(v).map_err(|p| (p, "a service-account key file's JSON, with private_key, private_key_id and client_email".to_string()))
        }
        ServiceAccountFile => match std::fs::read_to_string(v) {
            Ok(key) => check_service_account_key(&key)
                .map_err(|p| (format!("names a file that {p}"), "a service-account key file, with private_key, private_key_id and client_email".to_string())),
            Err(e) => Err((format!("cannot be read ({e})"), "the path of a readable service-account key file".to_string())),
        },
    }
}

/// A URL object_store can both build requests to and sign: the `url` crate and the
/// `http` crate must both accept it (the S3 signer re-parses a request's URI with
/// `url` and panics when that fails; a request whose URI `http` refuses panics when
/// sent), once a bucket and a key are appended too.
fn check_http_url(v: &str) -> Result<(), String> {
    let url = Url::parse(v).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("has scheme {:?}, not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries a user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("has a query or a fragment".into());
    }
    check_request_uri(v)?;
    check_request_uri(&format!("{}/bucket/key", v.trim_end_matches('/')))
}

/// A request URI the `http` crate accepts, whose text the `url` crate reads back, and
/// whose authority can be a Host header.
fn check_request_uri(v: &str) -> Result<(), String> {
    let uri: hyper::Uri = v.parse().map_err(|e| format!("is not a valid HTTP request URI ({e})"))?;
    let authority = uri.authority().ok_or("has no host")?;
    if authority.host().is_empty() {
        return Err("has no host".into());
    }
    hyper::header::HeaderValue::from_str(authority.as_str()).map_err(|_| "has a host that cannot be sent as a Host header")?;
    Url::parse(&uri.to_string()).map_err(|e| format!("is read differently by the URL parser ({e})"))?;
    Ok(())
}

fn check_proxy_url(v: &str) -> Result<(), String> {
    let url = Url::parse(v).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err(format!("has scheme {:?}, not http, https, socks5 or socks5h", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    let uri: hyper::Uri = v.parse().map_err(|e| format!("is not a valid URI ({e})"))?;
    if uri.authority().is_none() {
        return Err("has no host".into());
    }
    Ok(())
}

/// `S3CopyIfNotExists`'s syntax, and a header name and value a request can carry.
fn check_copy_if_not_exists(v: &str) -> Result<(), String> {
    if v.trim() == "multipart" {
        return Ok(());
    }
    let (variant, rest) = v.split_once(':').ok_or("is not a known form")?;
    let (name, value) = match variant.trim() {
        "header" => rest.split_once(':').ok_or("names no header value")?,
        "header-with-status" => {
            let parts: Vec<&str> = rest.split(':').collect();
            let [name, value, status] = parts[..] else { return Err("is not header-with-status:<name>:<value>:<status>".into()) };
            status.trim().parse::<hyper::StatusCode>().map_err(|_| "has an invalid status code")?;
            (name, value)
        }
        _ => return Err("is not a known form".into()),
    };
    name.trim().parse::<hyper::header::HeaderName>().map_err(|_| "has an invalid header name")?;
    hyper::header::HeaderValue::from_str(value.trim()).map_err(|_| "has a header value an HTTP request cannot carry")?;
    Ok(())
}

/// What object_store's `ServiceAccountCredentials` deserializes, and a usable base URL.
fn check_service_account_key(v: &str) -> Result<(), String> {
    let json: serde_json::Value = serde_json::from_str(v).map_err(|e| format!("is not JSON ({e})"))?;
    let object = json.as_object().ok_or("is not a JSON object")?;
    for field in ["private_key", "private_key_id", "client_email"] {
        if !object.get(field).is_some_and(serde_json::Value::is_string) {
            return Err(format!("has no string {field:?}"));
        }
    }
    if object.get("disable_oauth").is_some_and(|d| !d.is_boolean()) {
        return Err("has a \"disable_oauth\" that is not a boolean".into());
    }
    match object.get("gcs_base_url") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(url)) => check_http_url(url).map_err(|p| format!("has a \"gcs_base_url\" that {p}")),
        Some(_) => Err("has a \"gcs_base_url\" that is not a string".into()),
    }
}

/// Checks every object_store variable the command uses (the shared families and those
/// of `sides`), once each: a value object_store would refuse, or could panic on, is a
/// problem naming the variable; a key object_store does not know is warned about (it
/// would be ignored); two names of one option with different values are a problem.
fn check_store_keys(check: &mut Check, raw: &RawEnv, sides: &[&str]) {
    let mut seen: BTreeMap<(&str, StoreFamily, String), (&str, &Secret)> = BTreeMap::new();
    for (name, value) in &raw.store_keys {
        let side = SIDES.iter().copied().find(|s| name.starts_with(s)).unwrap_or("");
        if !side.is_empty() && !sides.contains(&side) {
            continue;
        }
        let key = name[side.len()..].to_ascii_lowercase();
        let Some(family) = StoreFamily::of_key(&key) else { continue };
        if key == format!("{}ca_bundle", family.prefix().to_ascii_lowercase()) {
            // Ours, not object_store's: read with the bucket it serves (see `ca_bundle`).
            continue;
        }
        let Some(canonical) = family.canonical(&key) else {
            tracing::warn!(variable = %name, "{name} is not an object_store option: it is ignored");
            continue;
        };
        if let Err((problem, expected)) = check_store_value(option_kind(&canonical), value.expose()) {
            check.fail(name, problem, expected);
        }
        match seen.entry((side, family, canonical)) {
            std::collections::btree_map::Entry::Occupied(first) => {
                let (first_name, first_value) = *first.get();
                if first_value != value {
                    check.fail(name, format!("sets the same option as {first_name}, to another value"), format!("only one of {first_name} and {name}"));
                }
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((name, value));
            }
        }
    }
}

// --------------------------------------------------------------- where a bucket points

/// Where a bucket URL points, normalised so that two can be compared: the same place
/// under different spellings (a trailing or doubled slash, `s3a://`, `..` or a symlink
/// in a local path) normalises to the same location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `s3`, `gs`, `az` or `file`.
    pub scheme: &'static str,
    /// The service: the effective endpoint (and for Azure the storage account); `None`
    /// is the provider's default.
    pub service: Option<String>,
    /// The bucket or container; empty for `file://`.
    pub bucket: String,
    /// The prefix (or the local path) by segments, empty segments dropped.
    pub segments: Vec<String>,
}

impl Location {
    /// Whether `other` is this location or lies under it (segment-wise: `data2` is not
    /// under `data`).
    pub fn contains(&self, other: &Location) -> bool {
        self.scheme == other.scheme && self.service == other.service && self.bucket == other.bucket && other.segments.starts_with(&self.segments)
    }

    pub fn overlaps(&self, other: &Location) -> bool {
        self.contains(other) || other.contains(self)
    }
}

/// Normalises a bucket URL with its options (for the endpoint). `None` for a URL that
/// is not a usable bucket URL (reported elsewhere).
pub fn location(url: &Url, options: &BTreeMap<String, Secret>) -> Option<Location> {
    let segments = || url.path().split('/').filter(|s| !s.is_empty()).map(percent_decode).collect::<Vec<_>>();
    let host = url.host_str().unwrap_or("").to_string();
    let endpoint = |v: Option<&String>| v.map(|e| normalise_endpoint(e));
    match url.scheme() {
        "file" => {
            let path = url.to_file_path().ok()?;
            let resolved = std::fs::canonicalize(&path).unwrap_or_else(|_| resolve_path(&path, 0));
            let segments = resolved
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            Some(Location { scheme: "file", service: None, bucket: String::new(), segments })
        }
        "s3" | "s3a" => {
            let o = effective_options(options, StoreFamily::Aws);
            let service = endpoint(o.get("aws_endpoint_url_s3").or_else(|| o.get("aws_endpoint")));
            Some(Location { scheme: "s3", service, bucket: host, segments: segments() })
        }
        "gs" => {
            let o = effective_options(options, StoreFamily::Google);
            let from_key = o
                .get("google_service_account_key")
                .and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok())
                .and_then(|k| k.get("gcs_base_url")?.as_str().map(str::to_string));
            let service = endpoint(o.get("google_base_url").or(from_key.as_ref()));
            Some(Location { scheme: "gs", service, bucket: host, segments: segments() })
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let o = effective_options(options, StoreFamily::Azure);
            let (container, account) = if url.username().is_empty() {
                (host, o.get("azure_storage_account_name").cloned())
            } else {
                (url.username().to_string(), host.split('.').next().map(str::to_string))
            };
            let account = account.unwrap_or_default().to_ascii_lowercase();
            let emulator = o.get("azure_storage_use_emulator").and_then(|v| parse_store_bool(v)) == Some(true);
            let service =
                if emulator { format!("emulator/{account}") } else { format!("{}/{account}", endpoint(o.get("azure_storage_endpoint")).unwrap_or_default()) };
            Some(Location { scheme: "az", service: Some(service), bucket: container, segments: segments() })
        }
        _ => None,
    }
}

/// An endpoint in one spelling: lower-case scheme and host, the port even when it is the
/// default, no trailing slash.
fn normalise_endpoint(e: &str) -> String {
    match Url::parse(e.trim()) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().map(|p| p.to_string()).unwrap_or_default(),
            u.path().trim_end_matches('/')
        ),
        Err(_) => e.trim().trim_end_matches('/').to_ascii_lowercase(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A local path made absolute and physical without requiring it to exist: `.` and `..`
/// applied, every symbolic link on the way resolved (even one whose target does not
/// exist yet), component by component as the kernel would.
fn resolve_path(path: &std::path::Path, depth: u32) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if depth < 40
                    && let Ok(target) = std::fs::read_link(&out)
                {
                    let parent = out.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
                    out = resolve_path(&parent.join(target), depth + 1);
                }
            }
        }
    }
    out
}

/// Refuses `variable`'s bucket overlapping `other`'s (one inside the other, or the same).
fn check_apart(check: &mut Check, this: &StoreSettings, other: &StoreSettings) {
    let (Some(a), Some(b)) = (location(&this.url, &this.options), location(&other.url, &other.options)) else { return };
    let (variable, other_variable) = (this.variable, other.variable);
    let problem = if a == b || (a.contains(&b) && b.contains(&a)) {
        format!("is the same as {other_variable}")
    } else if b.contains(&a) {
        format!("is inside {other_variable}")
    } else if a.contains(&b) {
        format!("contains {other_variable}")
    } else {
        return;
    };
    check.fail(variable, problem, format!("a bucket or prefix outside {other_variable}, and {other_variable} outside it"));
}

fn common(check: &mut Check, raw: &RawEnv) -> Common {
    let push_url = raw.pushgateway_url.as_ref().map(|u| u.trim()).filter(|u| !u.is_empty()).and_then(|u| match Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Some(url),
        _ => {
            check.fail(vars::PUSHGATEWAY_URL.name, format!("{u:?} is not an http(s) URL"), "http://host:9091 or https://host");
            None
        }
    });
    if raw.pushgateway_password.is_some() && raw.pushgateway_username.is_none() {
        check.fail(vars::PUSHGATEWAY_USERNAME.name, "is not set but PUSHGATEWAY_PASSWORD is", "both basic-auth variables, or neither");
    }
    let timeout = check.setting(&vars::PUSHGATEWAY_TIMEOUT, &raw.pushgateway_timeout, parse::duration);
    let zone = raw.schedule_timezone.as_ref().map(|z| z.trim()).filter(|z| !z.is_empty()).map(|z| match schedule::parse_zone(z) {
        Ok(tz) => tz,
        Err(e) => {
            check.fail(vars::SCHEDULE_TIMEZONE.name, format!("{z:?} is not a time zone Kubernetes accepts ({e})"), schedule::EXPECTED_ZONE);
            // Still set, for SCHEDULE's check (a TZ= prefix cannot be combined with it).
            chrono_tz::Tz::UTC
        }
    });
    let schedule = raw.schedule.as_ref().map(|s| s.trim()).filter(|s| !s.is_empty()).and_then(|s| match Schedule::parse(s, zone) {
        Ok(sched) => Some(sched),
        Err(e) => {
            check.fail(vars::SCHEDULE.name, format!("{s:?} is not a cron expression Kubernetes accepts ({e})"), schedule::EXPECTED_SCHEDULE);
            None
        }
    });
    if let Some(name) = &raw.cluster_name {
        let ok = !name.trim().is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            check.fail(vars::CLUSTER_NAME.name, format!("{name:?} is not usable as a label value"), "letters, digits, '-', '_' or '.', at most 128 characters");
        }
    }
    let _ = check.optional(&vars::LOG_FORMAT, &raw.log_format, parse::choice(LOG_FORMATS));
    Common {
        cluster_name: raw.cluster_name.as_ref().map(|n| n.trim().to_string()),
        push: PushSettings { url: push_url, username: raw.pushgateway_username.clone(), password: raw.pushgateway_password.clone(), timeout },
        schedule,
        progress_interval: check.setting(&vars::PROGRESS_INTERVAL, &raw.progress_interval, parse::duration),
    }
}

/// WORKLOAD_IDENTITY, read once per command (whatever the number of buckets); `None`
/// when its value is bad (a problem naming it).
fn shared_workload_identity(check: &mut Check, raw: &RawEnv) -> Option<bool> {
    match raw.workload_identity {
        None => Some(check.setting(&vars::WORKLOAD_IDENTITY, &None, parse::boolean)),
        Some(_) => check.optional(&vars::WORKLOAD_IDENTITY, &raw.workload_identity, parse::boolean),
    }
}

/// Whether one bucket uses the platform's identity: its side's variable, else the
/// shared one. `None` when the variable that decides is bad: that is reported once, by
/// name, and the bucket's credentials are then not judged (see [`store`]).
fn side_workload_identity(check: &mut Check, v: &Variable, value: &Option<String>, shared: Option<bool>) -> Option<bool> {
    match value {
        None => shared,
        Some(_) => check.optional(v, value, parse::boolean),
    }
}

/// The GC_GRACE floor: longer than any run can last, so that a blob a run copied (not
/// yet referenced by a manifest) is never swept by a concurrent or later retention.
fn check_gc_grace_floor(check: &mut Check, gc_grace: Duration, cluster: &ClusterSettings, max_downtime: Duration) {
    let involved = [vars::GC_GRACE.name, vars::MAX_DOWNTIME.name, vars::PAUSE_TIMEOUT.name, vars::RESUME_TIMEOUT.name];
    if check.problems.iter().any(|p| involved.contains(&p.variable.as_str())) {
        return;
    }
    let floor = max_downtime.saturating_add(cluster.pause_timeout).saturating_add(cluster.resume_timeout).saturating_add(Duration::from_secs(3600));
    if gc_grace < floor {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        check.fail(
            vars::GC_GRACE.name,
            format!(
                "{} is below its floor of {} = MAX_DOWNTIME ({}) + PAUSE_TIMEOUT ({}) + RESUME_TIMEOUT ({}) + 1h",
                h(gc_grace),
                h(floor),
                h(max_downtime),
                h(cluster.pause_timeout),
                h(cluster.resume_timeout)
            ),
            format!("at least {}: longer than any run can last, so that a blob copied by a run still in progress is never swept", h(floor)),
        );
    }
}

fn bin_dir(check: &mut Check, raw: &RawEnv) -> Option<PathBuf> {
    let dir = raw.pg_bin_dir.as_ref().map(|d| PathBuf::from(d.trim())).filter(|d| !d.as_os_str().is_empty())?;
    if !dir.is_dir() {
        check.fail(vars::PG_BIN_DIR.name, format!("{} is not a directory", dir.display()), "a directory holding pg_dump and pg_restore");
    }
    Some(dir)
}

/// DUMP_RECIPIENTS: age X25519 public keys. Only values shaped like a public key are
/// echoed in a problem: an identity given by mistake must not reach the logs.
fn dump_recipients(check: &mut Check, raw: &RawEnv) -> Vec<age::x25519::Recipient> {
    const VARIABLE: &str = vars::DUMP_RECIPIENTS.name;
    const EXPECTED: &str =
        "comma-separated age X25519 public keys, age1… (as printed by `age-keygen -y key.txt`), or the variable unset to store the dumps unencrypted";
    let Some(text) = &raw.dump_recipients else { return Vec::new() };
    let items: Vec<&str> = text.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
    if items.is_empty() {
        check.fail(VARIABLE, "names no recipient", EXPECTED);
    }
    let mut recipients = Vec::new();
    for (n, item) in items.iter().enumerate().map(|(i, item)| (i + 1, item)) {
        if item.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            check.fail(
                VARIABLE,
                format!(
                    "item {n} is an age identity (a secret key, not printed here), not a recipient: the backup must never hold it; rotate it if it was exposed"
                ),
                EXPECTED,
            );
            continue;
        }
        match item.parse::<age::x25519::Recipient>() {
            Ok(r) if recipients.contains(&r) => check.fail(VARIABLE, format!("{item:?} is listed twice"), "each recipient once"),
            Ok(r) => recipients.push(r),
            Err(e) => {
                let public = item.len() <= 100 && item.to_ascii_lowercase().starts_with("age1") && item.bytes().all(|b| b.is_ascii_alphanumeric());
                let what = if public { format!("{item:?}") } else { format!("item {n}") };
                check.fail(VARIABLE, format!("{what} is not an age X25519 recipient ({e})"), EXPECTED);
            }
        }
    }
    recipients
}

/// RESTORE_IDENTITY_FILE: read and parsed now, so that a restore never starts without a
/// usable key. Problems name the file and the line, never its content.
fn restore_identity(check: &mut Check, raw: &RawEnv) -> Option<DumpIdentity> {
    const VARIABLE: &str = vars::RESTORE_IDENTITY_FILE.name;
    const EXPECTED: &str = "an age identity file: one AGE-SECRET-KEY-1… per line (as written by `age-keygen -o key.txt`), # comments allowed";
    let file = raw.restore_identity_file.as_ref().map(|f| PathBuf::from(f.trim()))?;
    let fail = |check: &mut Check, problem: String| {
        check.fail(VARIABLE, problem, EXPECTED);
        None
    };
    match std::fs::metadata(&file) {
        Ok(m) if !m.is_file() => return fail(check, format!("{} is not a file", file.display())),
        Ok(m) if m.len() > 1024 * 1024 => return fail(check, format!("{} is too large for an identity file ({} bytes)", file.display(), m.len())),
        Ok(_) => {}
        Err(e) => return fail(check, format!("{} cannot be read ({e})", file.display())),
    }
    let text = match std::fs::read(&file).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => return fail(check, format!("{} is not a text file", file.display())),
        Err(e) => return fail(check, format!("{} cannot be read ({e})", file.display())),
    };
    let mut identities = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<age::x25519::Identity>() {
            Ok(identity) => identities.push(identity),
            Err(_) if line.to_ascii_lowercase().starts_with("age1") => {
                return fail(check, format!("{}: line {n} is a recipient (a public key), not an identity", file.display()));
            }
            Err(_) => return fail(check, format!("{}: line {n} is not an age X25519 identity", file.display())),
        }
    }
    if identities.is_empty() {
        return fail(check, format!("{} holds no identity", file.display()));
    }
    Some(DumpIdentity { file, identities })
}

fn database_names(check: &mut Check, raw: &RawEnv) -> Vec<String> {
    let text = check.setting(&vars::DATABASES, &raw.databases, parse::text);
    let names: Vec<String> = text.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
    let valid = |d: &String| d.len() <= 63 && d.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-$".contains(&b));
    if names.is_empty() || !names.iter().all(valid) {
        check.fail(vars::DATABASES.name, format!("{text:?} is not a list of database names"), "comma-separated names such as pachyderm,dex");
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &names {
        if !seen.insert(n) {
            check.fail(vars::DATABASES.name, format!("{n:?} is listed twice"), "each database once");
        }
    }
    names
}

fn retention(check: &mut Check, raw: &RawEnv) -> Policy {
    let n = |check: &mut Check, v: &Variable, value: &Option<String>| check.setting(v, value, parse::whole(0..=100_000)) as usize;
    Policy {
        last: n(check, &vars::KEEP_LAST, &raw.keep_last),
        hourly: n(check, &vars::KEEP_HOURLY, &raw.keep_hourly),
        daily: n(check, &vars::KEEP_DAILY, &raw.keep_daily),
        weekly: n(check, &vars::KEEP_WEEKLY, &raw.keep_weekly),
        monthly: n(check, &vars::KEEP_MONTHLY, &raw.keep_monthly),
        yearly: n(check, &vars::KEEP_YEARLY, &raw.keep_yearly),
        within: check.optional(&vars::KEEP_WITHIN, &raw.keep_within, parse::duration),
        min_keep: n(check, &vars::MIN_KEEP, &raw.min_keep),
    }
}

/// COPY_SHARDS and what it needs: a pre-copy to shard, and the run's own pod, whose
/// spec the Job copies and which owns it.
fn shard_settings(check: &mut Check, raw: &RawEnv, copy: &CopySettings) -> Option<ShardSettings> {
    let count = check.setting(&vars::COPY_SHARDS, &raw.copy_shards, parse::whole(1..=256)) as u32;
    let parallelism = check.optional(&vars::COPY_PARALLELISM, &raw.copy_parallelism, parse::whole(1..=256)).map(|n| n as u32);
    let pod = check.optional(&vars::POD_NAME, &raw.pod_name, parse::name);
    let namespace = check.optional(&vars::POD_NAMESPACE, &raw.pod_namespace, parse::name);
    if count < 2 {
        return None;
    }
    let why = format!("is {count}, which shards the pre-copy");
    if copy.objects != ObjectsMode::Copy || !copy.precopy {
        check.fail(vars::COPY_SHARDS.name, format!("{why}, but OBJECTS=skip or PRECOPY=false leaves no pre-copy"), "1, or OBJECTS=copy and PRECOPY=true");
    }
    // Unset only: a bad value is already reported by its parse.
    for (v, raw_value) in [(&vars::POD_NAME, &raw.pod_name), (&vars::POD_NAMESPACE, &raw.pod_namespace)] {
        if raw_value.is_none() {
            check.fail(
                v.name,
                format!("is unset, and COPY_SHARDS {why} into a Job made from this pod"),
                "the pod's own name and namespace from the downward API (fieldRef metadata.name / metadata.namespace), as the chart sets them",
            );
        }
    }
    Some(ShardSettings { count, parallelism: parallelism.unwrap_or(count).min(count), pod: pod?, namespace: namespace? })
}

/// COPY_CONCURRENCY, for the run's copy and the restore's.
fn copy_concurrency(check: &mut Check, raw: &RawEnv) -> usize {
    check.setting(&vars::COPY_CONCURRENCY, &raw.copy_concurrency, parse::whole(1..=1024)) as usize
}

const PAUSE_MODES: &[(&str, PauseMode)] = &[("scale", PauseMode::Scale), ("pachyderm", PauseMode::Pachyderm), ("none", PauseMode::None)];
const OBJECTS_MODES: &[(&str, ObjectsMode)] = &[("copy", ObjectsMode::Copy), ("skip", ObjectsMode::Skip)];
const COPY_MODES: &[(&str, CopyMode)] = &[("auto", CopyMode::Auto), ("server", CopyMode::Server), ("stream", CopyMode::Stream)];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("json", LogFormat::Json), ("text", LogFormat::Text)];

impl RunConfig {
    pub fn from_env(raw: &RawEnv) -> Result<Self, ConfigError> {
        let mut check = Check::new();
        let common = common(&mut check, raw);
        let cluster = ClusterSettings::from_env_checked(&mut check, raw);
        let server = pg_server(&mut check, raw, "");
        let databases = database_names(&mut check, raw);
        let bin_dir = bin_dir(&mut check, raw);
        let recipients = dump_recipients(&mut check, raw);
        let shared_wi = shared_workload_identity(&mut check, raw);
        let source_wi = side_workload_identity(&mut check, &vars::SOURCE_WORKLOAD_IDENTITY, &raw.source_workload_identity, shared_wi);
        let target_wi = side_workload_identity(&mut check, &vars::TARGET_WORKLOAD_IDENTITY, &raw.target_workload_identity, shared_wi);
        check_store_keys(&mut check, raw, &["SOURCE_", "TARGET_"]);
        let objects = check.setting(&vars::OBJECTS, &raw.objects, parse::choice(OBJECTS_MODES));
        let source = store(&mut check, &vars::SOURCE_URL, "SOURCE_", &raw.source_url, raw, source_wi, objects == ObjectsMode::Copy);
        let target = store(&mut check, &vars::TARGET_URL, "TARGET_", &raw.target_url, raw, target_wi, true);
        let copy = CopySettings {
            objects,
            precopy: check.setting(&vars::PRECOPY, &raw.precopy, parse::boolean),
            concurrency: copy_concurrency(&mut check, raw),
            mode: check.setting(&vars::COPY_MODE, &raw.copy_mode, parse::choice(COPY_MODES)),
            full: false,
            precopy_timeout: check.optional(&vars::PRECOPY_TIMEOUT, &raw.precopy_timeout, parse::duration),
            shards: None,
        };
        let copy = CopySettings { shards: shard_settings(&mut check, raw, &copy), ..copy };
        let max_downtime = check.setting(&vars::MAX_DOWNTIME, &raw.max_downtime, parse::duration);
        let retention = retention(&mut check, raw);
        let gc_grace = check.setting(&vars::GC_GRACE, &raw.gc_grace, parse::duration);
        check_gc_grace_floor(&mut check, gc_grace, &cluster, max_downtime);
        let preflight_timeout = check.setting(&vars::PREFLIGHT_TIMEOUT, &raw.preflight_timeout, parse::duration);
        // Unset, `auto`: decided at the preflight from pg_dump's version.
        let compression = check
            .optional(&vars::DUMP_COMPRESSION, &raw.dump_compression, |v| {
                crate::database::DumpCompression::parse(v)
                    .map_err(|problem| (problem, "auto, none, 0-9, or gzip, lz4, zstd with an optional :level (gzip:1, zstd:3)".to_string()))
            })
            .unwrap_or(crate::database::DumpCompression::Auto);
        if let (Some(s), Some(t)) = (&source, &target) {
            check_apart(&mut check, t, s);
            if copy.mode == CopyMode::Server
                && let crate::server_copy::Route::Stream(why) = crate::server_copy::route(CopyMode::Server, s, t)
            {
                check.fail(
                    vars::COPY_MODE.name,
                    format!("is server, but {why}"),
                    "auto or stream, or two buckets of one service: S3 (s3://, without SSE-C), Azure (az://) or GCS (gs://)",
                );
            }
        }
        // An unset SOURCE_URL is fine with OBJECTS=skip; then nothing is read from it.
        let source = source.unwrap_or_else(|| StoreSettings {
            variable: vars::SOURCE_URL.name,
            url: Url::parse("file:///nonexistent").expect("static URL"),
            options: BTreeMap::new(),
            ca_bundle: None,
        });
        match (server, target) {
            (Some(server), Some(target)) => check.finish(RunConfig {
                common,
                cluster,
                database: DatabaseSettings { server, databases, bin_dir, recipients, compression },
                source,
                target,
                copy,
                max_downtime,
                retention,
                gc_grace,
                preflight_timeout,
            }),
            _ => Err(ConfigError(check.problems)),
        }
    }
}

/// A label selector of the equality form Kubernetes accepts.
fn selector(v: &str) -> Result<String, Bad> {
    valid_selector(v).map(|()| v.to_string()).map_err(|e| (format!("{v:?}: {e}"), "a label selector such as suite=pachyderm,component=worker".into()))
}

impl ClusterSettings {
    fn from_env_checked(check: &mut Check, raw: &RawEnv) -> Self {
        let worker_selector = check.setting(&vars::WORKER_SELECTOR, &raw.worker_selector, selector);
        ClusterSettings {
            namespace: check.optional(&vars::PACHYDERM_NAMESPACE, &raw.pachyderm_namespace, parse::name),
            pachd: check.setting(&vars::PACHD_DEPLOYMENT, &raw.pachd_deployment, parse::name),
            pachw: check.setting(&vars::PACHW_DEPLOYMENT, &raw.pachw_deployment, parse::name),
            worker_selector,
            pachd_configmap: check.setting(&vars::PACHD_CONFIGMAP, &raw.pachd_configmap, parse::name),
            helm_release: check.optional(&vars::HELM_RELEASE, &raw.helm_release, parse::name),
            pause_mode: check.setting(&vars::PAUSE_MODE, &raw.pause_mode, parse::choice(PAUSE_MODES)),
            pause_timeout: check.setting(&vars::PAUSE_TIMEOUT, &raw.pause_timeout, parse::duration),
            resume_timeout: check.setting(&vars::RESUME_TIMEOUT, &raw.resume_timeout, parse::duration),
            lease_name: check.setting(&vars::LEASE_NAME, &raw.lease_name, parse::name),
            lease_duration: check.setting(&vars::LEASE_DURATION, &raw.lease_duration, parse::duration),
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
        let shared_wi = shared_workload_identity(&mut check, raw);
        let target_wi = side_workload_identity(&mut check, &vars::TARGET_WORKLOAD_IDENTITY, &raw.target_workload_identity, shared_wi);
        check_store_keys(&mut check, raw, &["TARGET_"]);
        let target = store(&mut check, &vars::TARGET_URL, "TARGET_", &raw.target_url, raw, target_wi, true);
        let retention = retention(&mut check, raw);
        let cluster = ClusterSettings::from_env_checked(&mut check, raw);
        let max_downtime = check.setting(&vars::MAX_DOWNTIME, &raw.max_downtime, parse::duration);
        let gc_grace = check.setting(&vars::GC_GRACE, &raw.gc_grace, parse::duration);
        check_gc_grace_floor(&mut check, gc_grace, &cluster, max_downtime);
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
        let shared_wi = shared_workload_identity(&mut check, raw);
        let target_wi = side_workload_identity(&mut check, &vars::TARGET_WORKLOAD_IDENTITY, &raw.target_workload_identity, shared_wi);
        let restore_wi = side_workload_identity(&mut check, &vars::RESTORE_WORKLOAD_IDENTITY, &raw.restore_workload_identity, shared_wi);
        check_store_keys(&mut check, raw, &["TARGET_", "RESTORE_"]);
        let target = store(&mut check, &vars::TARGET_URL, "TARGET_", &raw.target_url, raw, target_wi, true);
        let destination = store(&mut check, &vars::RESTORE_URL, "RESTORE_", &raw.restore_url, raw, restore_wi, need_bucket);
        let copy_mode = check.setting(&vars::COPY_MODE, &raw.copy_mode, parse::choice(COPY_MODES));
        if let (Some(d), Some(t)) = (&destination, &target) {
            check_apart(&mut check, d, t);
            if copy_mode == CopyMode::Server
                && let crate::server_copy::Route::Stream(why) = crate::server_copy::restore_route(CopyMode::Server, t, d)
            {
                check.fail(vars::COPY_MODE.name, format!("is server, but {why}"), "auto or stream, or two S3 buckets (s3://) without SSE-C");
            }
        }
        let server = if need_server || raw.restore_pghost.is_some() || raw.libpq_keys.contains_key("RESTORE_PGSERVICE") {
            pg_server(&mut check, raw, RESTORE)
        } else {
            None
        };
        let bin_dir = bin_dir(&mut check, raw);
        let concurrency = copy_concurrency(&mut check, raw);
        let preflight_timeout = check.setting(&vars::PREFLIGHT_TIMEOUT, &raw.preflight_timeout, parse::duration);
        let identity = restore_identity(&mut check, raw);
        let scratch = Scratch {
            jobs: check.setting(&vars::RESTORE_JOBS, &raw.restore_jobs, parse::whole(1..=64)) as u32,
            limit: check.setting(&vars::RESTORE_SCRATCH_LIMIT, &raw.restore_scratch_limit, parse::bytes),
        };
        match target {
            Some(target) => {
                check.finish(RestoreConfig { common, target, server, destination, bin_dir, concurrency, preflight_timeout, identity, copy_mode, scratch })
            }
            None => Err(ConfigError(check.problems)),
        }
    }
}

/// The log settings, read before anything else so that even a configuration error is
/// logged in the configured format (a bad LOG_FORMAT is json until it is reported).
pub fn log_settings(raw: &RawEnv) -> (LogFormat, String) {
    let format = match raw.log_format.as_deref().map(|f| f.trim().to_ascii_lowercase()) {
        Some(f) if f == "text" => LogFormat::Text,
        _ => LogFormat::Json,
    };
    let filter = raw.rust_log.as_deref().or(vars::RUST_LOG.default_value()).unwrap_or_default();
    (format, filter.to_string())
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
    fn sizes_read_in_binary_units_and_refuse_guesses() {
        for (text, want) in [("0", 0), ("1024", 1024), ("512Mi", 512 << 20), ("1GiB", 1 << 30), ("2T", 2u64 << 40), ("3 KiB", 3 << 10), ("7b", 7)] {
            assert_eq!(parse::bytes(text), Ok(want), "{text}");
        }
        for bad in ["", "1GB", "1.5GiB", "-1", "GiB", "1PiB", "99999999999999999999", "18446744073709551615Ki"] {
            assert!(parse::bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn s3_bodies_are_unsigned_over_tls_only() {
        let unsigned = |extra: &[(&'static str, &'static str)]| {
            let c = RunConfig::from_env(&env(&with(extra))).expect("valid");
            let get = |s: &StoreSettings| s.options.get("aws_unsigned_payload").map(|v| v.expose().to_string());
            (get(&c.source), get(&c.target))
        };
        let yes = Some("true".to_string());
        assert_eq!(unsigned(&[]), (yes.clone(), yes.clone()), "AWS itself: TLS");
        assert_eq!(unsigned(&[("AWS_ENDPOINT", "https://minio.example:9000")]), (yes.clone(), yes.clone()));
        assert_eq!(unsigned(&[("AWS_ENDPOINT", "http://minio:9000"), ("AWS_ALLOW_HTTP", "true")]), (None, None), "plain HTTP keeps signed bodies");
        assert_eq!(unsigned(&[("TARGET_AWS_ENDPOINT", "http://minio:9000"), ("AWS_ALLOW_HTTP", "true")]), (yes.clone(), None), "decided per bucket");
        assert_eq!(unsigned(&[("AWS_UNSIGNED_PAYLOAD", "false")]), (Some("false".into()), Some("false".into())), "the user's choice stands");
        let c = RunConfig::from_env(&env(&with(&[("TARGET_URL", "file:///backups")]))).expect("valid");
        assert!(!c.target.options.contains_key("aws_unsigned_payload"), "S3 only");
    }

    #[test]
    fn copy_shards_take_the_pod_and_default_their_parallelism() {
        let pod = [("POD_NAME", "nightly-1-abcde"), ("POD_NAMESPACE", "backup")];
        assert_eq!(RunConfig::from_env(&env(GOOD)).expect("valid").copy.shards, None);
        assert_eq!(RunConfig::from_env(&env(&with(&[("COPY_SHARDS", "1")]))).expect("valid").copy.shards, None, "one shard is one pod: no Job");
        let four = RunConfig::from_env(&env(&with(&[("COPY_SHARDS", "4"), pod[0], pod[1]]))).expect("valid");
        assert_eq!(four.copy.shards, Some(ShardSettings { count: 4, parallelism: 4, pod: "nightly-1-abcde".into(), namespace: "backup".into() }));
        let capped = RunConfig::from_env(&env(&with(&[("COPY_SHARDS", "4"), ("COPY_PARALLELISM", "16"), pod[0], pod[1]]))).expect("valid");
        assert_eq!(capped.copy.shards.map(|s| s.parallelism), Some(4), "never more pods at once than indexes");
        let both_unset = RunConfig::from_env(&env(&with(&[("COPY_SHARDS", "4")]))).unwrap_err();
        let named: Vec<&str> = both_unset.0.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(named, ["POD_NAME", "POD_NAMESPACE"]);
        let skip = RunConfig::from_env(&env(&with(&[("COPY_SHARDS", "4"), ("OBJECTS", "skip"), pod[0], pod[1]]))).unwrap_err();
        assert_eq!(skip.0.iter().map(|p| p.variable.as_str()).collect::<Vec<_>>(), ["COPY_SHARDS"]);
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
            assert!(!v.default.to_string().is_empty(), "{} has no documented default", v.name);
        }
    }

    /// Every default declared in VARIABLES parses with its variable's own check and is
    /// what the settings use when the variable is unset: every command's settings are
    /// the same with the variable unset as with its default written out.
    #[test]
    fn every_default_is_what_an_unset_variable_means() {
        let base = [
            ("PGHOST", "db"),
            ("RESTORE_PGHOST", "scratch"),
            ("SOURCE_URL", "s3://pach-data"),
            ("TARGET_URL", "s3://backups/nightly"),
            ("RESTORE_URL", "s3://restored"),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
        ];
        let settings = |extra: &[(&str, &str)]| {
            let raw = env(&base.iter().chain(extra).copied().collect::<Vec<_>>());
            let shown = |r: Result<String, ConfigError>| r.unwrap_or_else(|e| panic!("{extra:?}: {e}"));
            [
                shown(RunConfig::from_env(&raw).map(|c| format!("{c:?}"))),
                shown(CatalogConfig::from_env(&raw).map(|c| format!("{c:?}"))),
                shown(RestoreConfig::from_env(&raw, true, true).map(|c| format!("{c:?}"))),
                shown(ClusterSettings::from_env(&raw).map(|c| format!("{c:?}"))),
                format!("{:?}", log_settings(&raw)),
            ]
        };
        let unset = settings(&[]);
        let mut checked = Vec::new();
        for v in VARIABLES {
            let Some(default) = v.default_value() else { continue };
            for (written, unset) in settings(&[(v.name, default)]).iter().zip(&unset) {
                assert_eq!(written, unset, "{}={default} is not what the settings are with {} unset", v.name, v.name);
            }
            checked.push(v.name);
        }
        for name in ["GC_GRACE", "COPY_CONCURRENCY", "PAUSE_MODE", "WORKLOAD_IDENTITY", "RESTORE_PGPORT", "RUST_LOG"] {
            assert!(checked.contains(&name), "{name} has no default value");
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
            (&[("SCHEDULE", "0 2 * * 7")], "SCHEDULE", "Sunday is 0 or SUN"),
            (&[("SCHEDULE_TIMEZONE", "Mars/Olympus_Mons")], "SCHEDULE_TIMEZONE", "unknown time zone"),
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
    fn schedules_are_read_as_kubernetes_reads_the_cronjob() {
        use chrono::{DateTime, Datelike, Utc};
        let saturday: DateTime<Utc> = "2024-06-15T12:00:00Z".parse().expect("instant");
        let next = |overrides: &[(&'static str, &'static str)]| {
            let c = RunConfig::from_env(&env(&with(overrides))).unwrap_or_else(|e| panic!("{overrides:?} must be valid: {e}"));
            c.common.schedule.expect("a schedule").next_after(&saturday).expect("fires")
        };
        // Sunday is 0 (the cron crate refused it: no backup ever ran).
        assert_eq!(next(&[("SCHEDULE", "0 2 * * 0")]).weekday(), chrono::Weekday::Sun);
        // Weekdays from a Saturday: Monday (the cron crate's reading said Sunday).
        assert_eq!(next(&[("SCHEDULE", "0 2 * * 1-5")]).to_rfc3339(), "2024-06-17T02:00:00+00:00");
        assert_eq!(next(&[("SCHEDULE", "@daily")]).to_rfc3339(), "2024-06-16T00:00:00+00:00");
        // SCHEDULE_TIMEZONE: 02:00 in Paris is 00:00 UTC in June.
        assert_eq!(next(&[("SCHEDULE", "0 2 * * *"), ("SCHEDULE_TIMEZONE", "Europe/Paris")]).to_rfc3339(), "2024-06-16T00:00:00+00:00");
        let c = RunConfig::from_env(&env(&with(&[("SCHEDULE_TIMEZONE", "Europe/Paris")]))).expect("a zone alone is valid");
        assert!(c.common.schedule.is_none());
        // Refused, naming the variable and the expression as given: (overrides,
        // variable, a fragment of the problem).
        type Case = (&'static [(&'static str, &'static str)], &'static str, &'static str);
        let cases: &[Case] = &[
            (&[("SCHEDULE", "0 2 * * 7")], "SCHEDULE", "\"0 2 * * 7\" is not a cron expression Kubernetes accepts (day of week field: end of range (7)"),
            (&[("SCHEDULE", "0 0 2 * * *")], "SCHEDULE", "\"0 0 2 * * *\" is not a cron expression Kubernetes accepts (expected exactly 5 fields"),
            (&[("SCHEDULE", "61 2 * * *")], "SCHEDULE", "minute field: end of range (61) above maximum (59)"),
            (
                &[("SCHEDULE_TIMEZONE", "Europe/Pariss")],
                "SCHEDULE_TIMEZONE",
                "\"Europe/Pariss\" is not a time zone Kubernetes accepts (unknown time zone Europe/Pariss)",
            ),
            (&[("SCHEDULE_TIMEZONE", "Local")], "SCHEDULE_TIMEZONE", "not an explicit time zone"),
            (&[("SCHEDULE", "CRON_TZ=Asia/Tokyo 0 2 * * *"), ("SCHEDULE_TIMEZONE", "Europe/Paris")], "SCHEDULE", "cannot use both SCHEDULE_TIMEZONE"),
        ];
        for (overrides, variable, fragment) in cases {
            let e = RunConfig::from_env(&env(&with(overrides))).expect_err(&format!("{overrides:?} must be refused"));
            let p = e.0.iter().find(|p| p.variable == *variable).unwrap_or_else(|| panic!("{overrides:?}: no problem names {variable}: {e}"));
            assert!(p.problem.contains(fragment), "{overrides:?}: {p} does not say {fragment:?}");
            assert!(p.expected.contains(if *variable == "SCHEDULE" { "spec.schedule" } else { "spec.timeZone" }), "{p}");
        }
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
            let libpq = stem == "PG" || stem == "RESTORE_PG";
            assert!(STORE_FAMILIES.contains(&unprefixed) || libpq, "{family} is not a family the code reads");
        }
        // The libpq variables read one by one are libpq's, and documented for both servers.
        for name in LIBPQ_FIELDS {
            assert!(LIBPQ_VARIABLES.contains(&name), "{name} is not a libpq variable");
            assert!(documented.contains(&name) && documented.contains(&format!("RESTORE_{name}").as_str()), "{name} is not documented");
        }
    }

    #[test]
    fn libpq_variables_reach_their_server_and_no_other() {
        let c = RunConfig::from_env(&env(&with(&[
            ("PGSSLCRLDIR", "/etc"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGTARGETSESSIONATTRS", "read-write"),
            ("PGSSLCRT", "/typo.crt"),
            ("PGDATABASE", "other"),
            ("RESTORE_PGSERVICE", "scratch"),
        ])))
        .expect("valid");
        let family: Vec<&str> = c.database.server.libpq.keys().map(String::as_str).collect();
        assert_eq!(family, ["PGCONNECT_TIMEOUT", "PGSSLCRLDIR", "PGTARGETSESSIONATTRS"], "unknown names and PGDATABASE left out, RESTORE_ ones too");
        assert_eq!(c.database.server.prefix, "");
        let r = RestoreConfig::from_env(
            &env(&with(&[("RESTORE_PGSERVICE", "scratch"), ("RESTORE_PGSSLMODE", "verify-full"), ("PGSSLCRLDIR", "/etc")])),
            true,
            false,
        )
        .expect("a service stands in for RESTORE_PGHOST");
        let server = r.server.expect("the restore server");
        assert_eq!((server.prefix, server.host.as_str(), server.sslmode.as_str()), ("RESTORE_", "", "verify-full"));
        assert_eq!(server.libpq.keys().map(String::as_str).collect::<Vec<_>>(), ["PGSERVICE"], "the backup's PG* never reach the restore server");
        assert_eq!(server.describe(), "service scratch");
        // Paths are checked now, naming the variable; PG_BIN_DIR is not libpq's.
        let cases: &[(&str, &str, &str)] = &[
            ("PGSSLCERT", "/nonexistent/client.crt", "cannot be read"),
            ("PGSSLKEY", "/nonexistent/client.key", "cannot be read"),
            ("PGSSLROOTCERT", "/etc", "is a directory"),
            ("PGSSLCRL", "/nonexistent/crl.pem", "cannot be read"),
            ("PGSSLCRLDIR", "/etc/hostname", "not a directory"),
            ("PGPASSFILE", "/nonexistent/.pgpass", "cannot be read"),
            ("PGCONNECT_TIMEOUT", "10s", "whole number of seconds"),
            ("PGOPTIONS", "-c statement_timeout=0\n", "control character"),
        ];
        for (variable, value, fragment) in cases {
            let e = RunConfig::from_env(&env(&with(&[(variable, value)]))).expect_err(&format!("{variable}={value:?} must be refused"));
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].variable, *variable, "{e}");
            assert!(e.0[0].problem.contains(fragment), "{e}");
        }
        for (variable, value) in [("PGSSLROOTCERT", "system"), ("PGSSLKEY", "pkcs11:token=backup"), ("PGSSLCERT", "/etc/hostname")] {
            RunConfig::from_env(&env(&with(&[(variable, value)]))).unwrap_or_else(|e| panic!("{variable}={value} must be accepted: {e}"));
        }
        let e = RunConfig::from_env(&env(&with(&[("PGHOST", "<unset>")]))).unwrap_err();
        assert!(e.0[0].expected.contains("PGSERVICE"), "{e}");
    }

    #[test]
    fn ca_bundles_are_read_per_bucket() {
        let dir = tempfile::tempdir().expect("dir");
        let system = "/etc/ssl/certs/ca-certificates.crt";
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n").expect("write");
        let c = RunConfig::from_env(&env(&with(&[("TARGET_AWS_CA_BUNDLE", system)]))).expect("valid");
        let bundle = c.target.ca_bundle.as_ref().expect("the target's bundle");
        assert_eq!(bundle.variable, "TARGET_AWS_CA_BUNDLE");
        assert!(!bundle.certificates.is_empty());
        assert!(c.source.ca_bundle.is_none(), "the source does not trust the target's CA");
        assert!(!c.target.options.keys().any(|k| k.contains("ca_bundle")), "not an object_store option");
        let c = RunConfig::from_env(&env(&with(&[("AWS_CA_BUNDLE", system)]))).expect("valid");
        assert!(c.source.ca_bundle.is_some() && c.target.ca_bundle.is_some(), "a shared bundle serves both");
        let garbage: &'static str = garbage.display().to_string().leak();
        let cases: &[(&str, &str, &str)] = &[
            ("TARGET_AWS_CA_BUNDLE", "/nonexistent/ca.pem", "cannot be read"),
            ("TARGET_AWS_CA_BUNDLE", "/etc/hostname", "holds no PEM certificate"),
            ("TARGET_AWS_CA_BUNDLE", "/etc", "is a directory"),
            ("AWS_CA_BUNDLE", garbage, "cannot be trusted as a CA"),
        ];
        for (variable, value, fragment) in cases {
            let e = RunConfig::from_env(&env(&with(&[(variable, value)]))).expect_err(&format!("{variable}={value} must be refused"));
            assert_eq!(e.0.len(), 1, "reported once: {e}");
            assert_eq!(e.0[0].variable, *variable, "{e}");
            assert!(e.0[0].problem.contains(fragment) && e.0[0].expected.contains("PEM"), "{e}");
        }
        // Another family's bundle is not read for an S3 bucket.
        RunConfig::from_env(&env(&with(&[("GOOGLE_CA_BUNDLE", "/nonexistent/ca.pem")]))).expect("unused");
    }

    fn loc(url: &str, options: &[(&str, &str)]) -> Location {
        let options = options.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect();
        location(&Url::parse(url).expect("a URL"), &options).unwrap_or_else(|| panic!("{url} has a location"))
    }

    #[test]
    fn locations_normalise_spellings_and_compare_by_segment() {
        let none: &[(&str, &str)] = &[];
        let minio: &[(&str, &str)] = &[("aws_endpoint", "http://minio:9000")];
        // (a, a's options, b, b's options, overlap?)
        let cases: &[(&str, &[(&str, &str)], &str, &[(&str, &str)], bool)] = &[
            ("s3://data", none, "s3://data/", none, true),
            ("s3://data", none, "s3://data/backups", none, true),
            ("s3://data/backups/blobs", none, "s3://data/backups", none, true),
            ("s3://b//x//y/", none, "s3://b/x/y", none, true),
            ("s3a://b/x", none, "s3://b/x", none, true),
            ("s3://b/a%20b", none, "s3://b/a b/c", none, true),
            ("s3://b/data", none, "s3://b/data2", none, false),
            ("s3://b/data2", none, "s3://b/data", none, false),
            ("s3://b", none, "s3://c", none, false),
            ("s3://b", minio, "s3://b", none, false),
            ("s3://b", minio, "s3://b/x", &[("aws_endpoint_url", "http://MINIO:9000/")], true),
            ("s3://b", &[("aws_endpoint", "http://minio:9000")], "s3://b", &[("aws_endpoint", "http://minio:9001")], false),
            ("s3://b", &[("aws_endpoint", "https://s3.example.com")], "s3://b", &[("aws_endpoint", "https://s3.example.com:443")], true),
            ("s3://b", &[("aws_endpoint", "http://a:1"), ("aws_endpoint_url_s3", "http://s3:1")], "s3://b", &[("aws_endpoint", "http://s3:1")], true),
            ("s3://b", &[("google_base_url", "http://gcs:1")], "s3://b", none, true),
            ("gs://b", none, "s3://b", none, false),
            ("gs://b/x", &[("google_base_url", "http://gcs:4443")], "gs://b/x/y", none, false),
            ("az://c", &[("azure_storage_account_name", "acct")], "abfss://c@acct.dfs.core.windows.net/x", none, true),
            ("azure://c/p", &[("azure_storage_account_name", "acct")], "az://c/p/q", &[("azure_storage_account_name", "ACCT")], true),
            ("az://c", &[("azure_storage_account_name", "one")], "az://c", &[("azure_storage_account_name", "two")], false),
            ("file:///srv/data", none, "file:///srv/data/", none, true),
            ("file:///srv/data", none, "file:///srv/data/../data/backups", none, true),
            ("file:///srv/data", none, "file:///srv/./data2", none, false),
            ("file:///srv/x/../data/b", none, "file:///srv/data", none, true),
            ("file:///srv/data", none, "s3://srv/data", none, false),
        ];
        for (a, ao, b, bo, overlap) in cases {
            let (la, lb) = (loc(a, ao), loc(b, bo));
            assert_eq!(la.overlaps(&lb), *overlap, "{a} {ao:?} vs {b} {bo:?}: {la:?} / {lb:?}");
            assert_eq!(lb.overlaps(&la), *overlap, "overlap is symmetric: {b} vs {a}");
        }
        assert_eq!(loc("s3://b//x//y/", none).segments, vec!["x", "y"]);
        assert!(loc("s3://data", none).contains(&loc("s3://data/backups", none)));
        assert!(!loc("s3://data/backups", none).contains(&loc("s3://data", none)));
    }

    #[test]
    fn local_locations_resolve_symlinks_even_dangling_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("source/backups")).expect("mkdir");
        std::fs::create_dir_all(root.join("elsewhere")).expect("mkdir");
        std::os::unix::fs::symlink(root.join("source/backups"), root.join("into-source")).expect("symlink");
        std::os::unix::fs::symlink(root.join("source/not-yet"), root.join("dangling-into-source")).expect("symlink");
        std::os::unix::fs::symlink("source", root.join("relative-link")).expect("symlink");
        let url = |p: &str| format!("file://{}/{p}", root.display());
        let source = loc(&url("source"), &[]);
        for inside in ["into-source", "into-source/new/deeper", "dangling-into-source", "relative-link/x", "elsewhere/../source/y"] {
            assert!(source.contains(&loc(&url(inside), &[])), "{inside} is inside the source");
        }
        // `..` is applied to the URL's path before any link is followed (by the URL
        // parser, as object_store sees it too): `into-source/../z` is `z`.
        for apart in ["elsewhere", "elsewhere/source", "new-dir/../elsewhere", "into-source/../z"] {
            assert!(!source.overlaps(&loc(&url(apart), &[])), "{apart} is apart from the source");
        }
        // The source reached through a link, the target a real directory inside it.
        assert!(loc(&url("relative-link"), &[]).contains(&loc(&url("source/backups"), &[])));
    }

    #[test]
    fn overlapping_buckets_are_refused_naming_both_variables() {
        let refused: &[(&[(&str, &str)], &str)] = &[
            (&[("SOURCE_URL", "s3://data"), ("TARGET_URL", "s3://data/")], "is the same as SOURCE_URL"),
            (&[("SOURCE_URL", "s3://data"), ("TARGET_URL", "s3://data/backups")], "is inside SOURCE_URL"),
            (&[("SOURCE_URL", "s3a://data/pach"), ("TARGET_URL", "s3://data//pach/backups")], "is inside SOURCE_URL"),
            (&[("SOURCE_URL", "s3://backups/nightly/blobs"), ("TARGET_URL", "s3://backups/nightly")], "contains SOURCE_URL"),
            (
                &[
                    ("SOURCE_URL", "s3://data"),
                    ("TARGET_URL", "s3://data/b"),
                    ("AWS_ENDPOINT", "http://minio:9000"),
                    ("TARGET_AWS_ENDPOINT_URL", "http://minio:9000/"),
                ],
                "is inside SOURCE_URL",
            ),
        ];
        for (overrides, fragment) in refused {
            let e = RunConfig::from_env(&env(&with(overrides))).expect_err(&format!("{overrides:?} must be refused"));
            let p = e.0.iter().find(|p| p.variable == "TARGET_URL").unwrap_or_else(|| panic!("{overrides:?}: no problem names TARGET_URL: {e}"));
            assert!(p.problem.contains(fragment), "{overrides:?}: {p}");
            assert_eq!(p.expected, "a bucket or prefix outside SOURCE_URL, and SOURCE_URL outside it");
        }
        let allowed: &[&[(&str, &str)]] = &[
            &[("SOURCE_URL", "s3://b/data"), ("TARGET_URL", "s3://b/data2")],
            &[("SOURCE_URL", "s3://data"), ("TARGET_URL", "s3://data"), ("TARGET_AWS_ENDPOINT", "http://minio:9000")],
            &[("SOURCE_URL", "gs://data"), ("TARGET_URL", "s3://data"), ("WORKLOAD_IDENTITY", "true")],
        ];
        for overrides in allowed {
            RunConfig::from_env(&env(&with(overrides))).unwrap_or_else(|e| panic!("{overrides:?} must be accepted: {e}"));
        }
        // Restoring into the backup bucket.
        let restore = |url: &str| {
            RestoreConfig::from_env(
                &env(&[("TARGET_URL", "s3://backups/nightly"), ("RESTORE_URL", url), ("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")]),
                false,
                true,
            )
        };
        for url in ["s3://backups", "s3://backups/nightly/", "s3://backups/nightly/blobs"] {
            let e = restore(url).expect_err(url);
            let p = e.0.iter().find(|p| p.variable == "RESTORE_URL").unwrap_or_else(|| panic!("{url}: {e}"));
            assert!(p.to_string().contains("TARGET_URL"), "{p}");
        }
        restore("s3://backups/restored").expect("a sibling prefix");
        restore("s3://pach-restored").expect("another bucket");
    }

    #[test]
    fn gc_grace_has_a_floor_longer_than_any_run() {
        let c = RunConfig::from_env(&env(&with(&[("GC_GRACE", "3h15m")]))).expect("the floor itself, with the default timeouts");
        assert_eq!(c.gc_grace, Duration::from_secs(3 * 3600 + 15 * 60));
        let e = RunConfig::from_env(&env(&with(&[("GC_GRACE", "3h14m")]))).unwrap_err();
        let p = e.0.iter().find(|p| p.variable == "GC_GRACE").expect("GC_GRACE named");
        assert!(p.problem.contains("floor of 3h 15m"), "{p}");
        assert!(p.problem.contains("MAX_DOWNTIME (2h) + PAUSE_TIMEOUT (5m) + RESUME_TIMEOUT (10m) + 1h"), "{p}");
        let e = RunConfig::from_env(&env(&with(&[("GC_GRACE", "4h"), ("MAX_DOWNTIME", "3h")]))).unwrap_err();
        assert!(e.0.iter().any(|p| p.variable == "GC_GRACE" && p.problem.contains("floor of 4h 15m")), "{e}");
        RunConfig::from_env(&env(&with(&[("GC_GRACE", "1h"), ("MAX_DOWNTIME", "10m"), ("PAUSE_TIMEOUT", "1m"), ("RESUME_TIMEOUT", "1m")])))
            .expect_err("1h is below even the smallest floor");
        RunConfig::from_env(&env(&with(&[("GC_GRACE", "2h"), ("MAX_DOWNTIME", "10m"), ("PAUSE_TIMEOUT", "1m"), ("RESUME_TIMEOUT", "1m")])))
            .expect("1h12m floor");
        // Also where only the catalog is read (the retention command).
        let e = CatalogConfig::from_env(&env(&with(&[("GC_GRACE", "1h")]))).unwrap_err();
        assert_eq!(e.0.iter().map(|p| p.variable.as_str()).collect::<Vec<_>>(), vec!["GC_GRACE"], "{e}");
        CatalogConfig::from_env(&env(&with(&[("GC_GRACE", "4h")]))).expect("4h is above the default floor");
        // An invalid component is reported alone, not as a floor too.
        let e = RunConfig::from_env(&env(&with(&[("MAX_DOWNTIME", "long")]))).unwrap_err();
        assert_eq!(e.0.iter().map(|p| p.variable.as_str()).collect::<Vec<_>>(), vec!["MAX_DOWNTIME"], "{e}");
    }

    #[test]
    fn dump_recipients_and_the_identity_file_are_checked() {
        use age::secrecy::ExposeSecret;
        let (ours, theirs) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let (public, secret) = (ours.to_public().to_string(), ours.to_string().expose_secret().to_string());
        let run = |value: &str| {
            let mut vars: Vec<(&str, &str)> = GOOD.to_vec();
            vars.push(("DUMP_RECIPIENTS", value));
            RunConfig::from_env(&env(&vars))
        };
        assert!(RunConfig::from_env(&env(GOOD)).expect("valid").database.recipients.is_empty(), "unset: unencrypted");
        let both = format!(" {public} ,{}", theirs.to_public());
        assert_eq!(run(&both).expect("valid").database.recipients, vec![ours.to_public(), theirs.to_public()]);
        for (value, fragment) in [
            ("age1notakey", "\"age1notakey\" is not an age X25519 recipient"),
            ("ssh-ed25519 AAAA", "item 1 is not an age X25519 recipient"),
            (",", "names no recipient"),
            (secret.as_str(), "item 1 is an age identity"),
            (&format!("{public},{public}"), "listed twice"),
        ] {
            let e = run(value).unwrap_err();
            assert!(e.0.len() == 1 && e.0[0].variable == "DUMP_RECIPIENTS" && e.0[0].to_string().contains(fragment), "{value}: {e}");
            assert!(!e.to_string().contains(&secret), "the secret key is echoed: {e}");
        }

        let dir = tempfile::tempdir().expect("dir");
        let restore = |contents: Option<&str>| {
            let path = dir.path().join("key.txt");
            let _ = std::fs::remove_file(&path);
            if let Some(c) = contents {
                std::fs::write(&path, c).expect("write");
            }
            let path = path.display().to_string();
            let mut vars: Vec<(&str, &str)> = GOOD.to_vec();
            vars.push(("RESTORE_IDENTITY_FILE", &path));
            RestoreConfig::from_env(&env(&vars), false, false)
        };
        assert!(RestoreConfig::from_env(&env(GOOD), false, false).expect("valid").identity.is_none());
        let file = format!("# created: 2026-01-01T00:00:00Z\n# public key: {public}\n{secret}\n\n");
        let identity = restore(Some(&file)).expect("valid").identity.expect("read");
        assert_eq!(identity.recipients(), vec![public.clone()]);
        assert!(!format!("{identity:?}").contains(&secret), "Debug shows the secret");
        // One character changed: the Bech32 checksum fails.
        let garbled = format!("{}{}\n", &secret[..secret.len() - 1], if secret.ends_with('X') { 'Y' } else { 'X' });
        for (contents, fragment) in [
            (None, "cannot be read"),
            (Some(""), "holds no identity"),
            (Some(garbled.as_str()), "line 1 is not an age X25519 identity"),
            (Some(public.as_str()), "line 1 is a recipient"),
        ] {
            let e = restore(contents).unwrap_err();
            assert!(e.0.len() == 1 && e.0[0].variable == "RESTORE_IDENTITY_FILE" && e.0[0].to_string().contains(fragment), "{contents:?}: {e}");
            assert!(!e.to_string().contains(&secret[20..]), "the file's content is echoed: {e}");
        }
    }

    #[test]
    fn preflight_timeout_defaults_to_a_minute() {
        assert_eq!(RunConfig::from_env(&env(GOOD)).expect("valid").preflight_timeout, Duration::from_secs(60));
        assert_eq!(RunConfig::from_env(&env(&with(&[("PREFLIGHT_TIMEOUT", "2m")]))).expect("valid").preflight_timeout, Duration::from_secs(120));
        let r = RestoreConfig::from_env(&env(&with(&[("PREFLIGHT_TIMEOUT", "15s")])), false, false).expect("valid");
        assert_eq!(r.preflight_timeout, Duration::from_secs(15));
        for bad in ["0s", "soon", "200y"] {
            let e = RunConfig::from_env(&env(&with(&[("PREFLIGHT_TIMEOUT", bad)]))).unwrap_err();
            assert_eq!(e.0[0].variable, "PREFLIGHT_TIMEOUT", "{bad}: {e}");
        }
    }

    #[test]
    fn workload_identity_is_reported_once() {
        let e = RestoreConfig::from_env(&env(&with(&[("WORKLOAD_IDENTITY", "sure"), ("RESTORE_URL", "s3://restored")])), false, true).unwrap_err();
        assert_eq!(e.0.iter().filter(|p| p.variable == "WORKLOAD_IDENTITY").count(), 1, "{e}");
        let e = RunConfig::from_env(&env(&with(&[("WORKLOAD_IDENTITY", "sure")]))).unwrap_err();
        assert_eq!(e.0.iter().filter(|p| p.variable == "WORKLOAD_IDENTITY").count(), 1, "{e}");
    }

    /// A bad WORKLOAD_IDENTITY (or side-prefixed one) is one problem: the buckets that
    /// would have used the identity are not reported again as having no credentials.
    #[test]
    fn a_bad_workload_identity_is_reported_once_not_again_as_missing_credentials() {
        let keyless = [("PGHOST", "db"), ("SOURCE_URL", "s3://pach-data"), ("TARGET_URL", "gs://backups"), ("RESTORE_URL", "az://restored")];
        let with_keyless = |extra: &[(&str, &str)]| env(&keyless.iter().chain(extra).copied().collect::<Vec<_>>());
        let only = |e: ConfigError, variable: &str| {
            let named: Vec<&str> = e.0.iter().map(|p| p.variable.as_str()).collect();
            assert_eq!(named, vec![variable], "{e}");
            assert_eq!(e.to_string().matches("WORKLOAD_IDENTITY").count(), 1, "{e}");
        };
        let shared = with_keyless(&[("WORKLOAD_IDENTITY", "sure"), ("AZURE_STORAGE_ACCOUNT_NAME", "acct")]);
        only(RunConfig::from_env(&shared).unwrap_err(), "WORKLOAD_IDENTITY");
        only(CatalogConfig::from_env(&shared).unwrap_err(), "WORKLOAD_IDENTITY");
        only(RestoreConfig::from_env(&shared, false, true).unwrap_err(), "WORKLOAD_IDENTITY");
        // A bad side variable stands in for the shared one on its bucket only.
        let side = with_keyless(&[("WORKLOAD_IDENTITY", "true"), ("SOURCE_WORKLOAD_IDENTITY", "sure")]);
        only(RunConfig::from_env(&side).unwrap_err(), "SOURCE_WORKLOAD_IDENTITY");
        // Still reported when the variable is fine and the bucket has no credentials.
        let e = RunConfig::from_env(&with_keyless(&[("SOURCE_WORKLOAD_IDENTITY", "false"), ("TARGET_WORKLOAD_IDENTITY", "true")])).unwrap_err();
        let named: Vec<&str> = e.0.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(named, vec!["SOURCE_URL"], "{e}");
    }

    #[test]
    fn store_key_names_are_object_stores_own() {
        let names = store_key_names();
        assert!(names.len() > 120, "{}", names.len());
        for name in &names {
            let key = name.to_ascii_lowercase();
            let family = StoreFamily::of_key(&key).expect("a family");
            assert!(family.canonical(&key).is_some(), "object_store does not know {name}");
        }
        for unknown in ["aws_ca_bundle", "aws_profile", "azure_storage_account", "google_project"] {
            let family = StoreFamily::of_key(unknown).expect("a family");
            assert!(family.canonical(unknown).is_none(), "{unknown} is not an object_store key");
        }
    }

    #[test]
    fn object_store_options_are_checked_by_kind() {
        // (variable, value, fragment of the problem); None: accepted.
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("AWS_ENDPOINT", "http://exa mple:9000", Some("not a URL")),
            ("AWS_ENDPOINT", "http://host^:9000", Some("not a URL")),
            ("TARGET_AWS_ENDPOINT", "not a url", Some("not a URL")),
            ("SOURCE_AWS_ENDPOINT_URL", "ftp://host", Some("not http or https")),
            ("AWS_ENDPOINT", "http://h\u{e4}st:9000", Some("not a valid HTTP request URI")),
            ("AWS_ENDPOINT", "http://host:9000?x=1", Some("query")),
            ("AWS_ENDPOINT", "http://user:pw@host:9000", Some("user name or password")),
            ("AWS_ENDPOINT", "http://host:9000 ", Some("not a valid HTTP request URI")),
            ("AWS_ENDPOINT", "http://host:9000\n", Some("control character")),
            ("AWS_ENDPOINT", "http://127.0.0.1:9000", None),
            ("AWS_ENDPOINT", "https://s3.eu-central-1.amazonaws.com/", None),
            ("AWS_ENDPOINT", "http://[::1]:9000", None),
            ("AWS_ENDPOINT_URL_S3", "http://minio.pachyderm.svc:9000/base", None),
            ("AWS_ALLOW_HTTP", "yes please", Some("not a boolean")),
            ("AWS_ALLOW_HTTP", " true", Some("not a boolean")),
            ("AWS_ALLOW_HTTP", "Y", None),
            ("TARGET_AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "-1", Some("not a boolean")),
            ("AZURE_STORAGE_USE_EMULATOR", "maybe", Some("not a boolean")),
            ("AWS_TIMEOUT", "99999999999999999999", Some("not a duration")),
            ("AWS_TIMEOUT", "20m", None),
            ("AWS_CONNECT_TIMEOUT", "5 parsecs", Some("not a duration")),
            ("GOOGLE_POOL_MAX_IDLE_PER_HOST", "-1", Some("not a whole number")),
            ("AWS_HTTP2_MAX_FRAME_SIZE", "1", Some("frame size")),
            ("AWS_HTTP2_MAX_FRAME_SIZE", "65536", None),
            ("AWS_REGION", "us east 1", Some("host name")),
            ("AWS_REGION", "eu-central-1", None),
            ("AWS_ACCESS_KEY_ID", "AKIA\u{e9}", Some("HTTP header")),
            ("AWS_SESSION_TOKEN", "token\r\n", Some("control character")),
            ("AWS_SECRET_ACCESS_KEY", "secret\n", Some("control character")),
            ("AWS_CHECKSUM_ALGORITHM", "SHA256", None),
            ("AWS_CHECKSUM_ALGORITHM", "md5", Some("one of sha256, crc64nvme")),
            ("AWS_SERVER_SIDE_ENCRYPTION", "aes256", Some("one of AES256")),
            ("AWS_SSE_CUSTOMER_KEY_BASE64", "c2hvcnQ=", Some("32-byte")),
            ("AWS_COPY_IF_NOT_EXISTS", "multipart", None),
            ("AWS_COPY_IF_NOT_EXISTS", "header: cf-copy-destination-if-none-match: *", None),
            ("AWS_COPY_IF_NOT_EXISTS", "header-with-status: k: v: 412", None),
            ("AWS_COPY_IF_NOT_EXISTS", "header: bad name: v", Some("header name")),
            ("AWS_COPY_IF_NOT_EXISTS", "header-with-status: k: v: 9999", Some("status")),
            ("AWS_CONDITIONAL_PUT", "etag", None),
            ("AWS_CONDITIONAL_PUT", "always", Some("etag or disabled")),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/creds", Some("not a URL path")),
            ("AWS_USER_AGENT", "agent\u{7f}", Some("control character")),
            ("AZURE_STORAGE_ACCOUNT_KEY", "%zz", Some("not base64")),
            ("AZURE_STORAGE_ACCOUNT_NAME", "acc^", Some("host name")),
            ("AZURE_STORAGE_ENCRYPTION_KEY", "AAAA", Some("32-byte")),
            ("AZURE_CREDENTIAL_TYPE", "magic", Some("one of auto")),
            ("AZURE_STORAGE_TOKEN", "t\u{e9}", Some("HTTP header")),
            ("GOOGLE_SERVICE_ACCOUNT_KEY", "{}", Some("private_key")),
            ("GOOGLE_SERVICE_ACCOUNT_KEY", "not json", Some("not JSON")),
            (
                "GOOGLE_SERVICE_ACCOUNT_KEY",
                "{\"private_key\":\"\",\"private_key_id\":\"\",\"client_email\":\"\",\"gcs_base_url\":\"http://exa mple\"}",
                Some("gcs_base_url"),
            ),
            ("GOOGLE_SERVICE_ACCOUNT_KEY", "{\n \"private_key\": \"k\",\n \"private_key_id\": \"i\",\n \"client_email\": \"e\"\n}\n", None),
            ("GOOGLE_BASE_URL", "%zz", Some("not a URL")),
            ("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/key.json", Some("cannot be read")),
            ("GOOGLE_SERVICE_ACCOUNT_PATH", "/etc/hostname", Some("names a file that is not JSON")),
            ("AWS_PROXY_URL", "squid:3128", Some("not http")),
            ("AWS_PROXY_URL", "http://proxy:3128", None),
            ("RESTORE_AWS_ENDPOINT", "^", None), // run does not read the restore bucket's keys
        ];
        for (variable, value, fragment) in cases {
            let result = RunConfig::from_env(&env(&with(&[(variable, value)])));
            match (fragment, result) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("{variable}={value:?} must be accepted: {e}"),
                (Some(_), Ok(_)) => panic!("{variable}={value:?} must be refused"),
                (Some(fragment), Err(e)) => {
                    let p = e.0.iter().find(|p| p.variable == *variable).unwrap_or_else(|| panic!("{variable}={value:?}: not named: {e}"));
                    assert!(p.to_string().contains(fragment), "{variable}={value:?}: {p} does not say {fragment:?}");
                    assert_eq!(e.0.len(), 1, "{variable}={value:?}: only that problem: {e}");
                    if value.len() > 6 {
                        assert!(!e.to_string().contains(value), "{variable}: the value (maybe a secret) is echoed: {e}");
                    }
                }
            }
        }
        let e = RestoreConfig::from_env(&env(&with(&[("RESTORE_AWS_ENDPOINT", "^"), ("RESTORE_URL", "s3://restored")])), false, true).unwrap_err();
        assert_eq!(e.0[0].variable, "RESTORE_AWS_ENDPOINT", "{e}");
    }

    #[test]
    fn aliases_of_one_option_resolve_like_object_store() {
        // The side's key wins over the shared one under any of its names.
        let c = RunConfig::from_env(&env(&with(&[("AWS_ENDPOINT_URL", "http://shared:9000"), ("TARGET_AWS_ENDPOINT", "http://target:9000")]))).expect("valid");
        assert_eq!(effective_options(&c.target.options, StoreFamily::Aws)["aws_endpoint"], "http://target:9000");
        assert_eq!(effective_options(&c.source.options, StoreFamily::Aws)["aws_endpoint"], "http://shared:9000");
        // Two names of one option with different values are ambiguous.
        let e = RunConfig::from_env(&env(&with(&[("AWS_ENDPOINT", "http://a:9000"), ("AWS_ENDPOINT_URL", "http://b:9000")]))).unwrap_err();
        assert!(e.0[0].to_string().contains("same option as AWS_ENDPOINT"), "{e}");
        RunConfig::from_env(&env(&with(&[("AWS_ENDPOINT", "http://a:9000"), ("AWS_ENDPOINT_URL", "http://a:9000")]))).expect("same value: fine");
        // Keys object_store does not know are left out (and warned about).
        let c = RunConfig::from_env(&env(&with(&[("AWS_CONFIG_FILE", "/etc/aws.cfg"), ("TARGET_AWS_PROFILE", "x")]))).expect("valid");
        assert!(!c.target.options.contains_key("aws_config_file") && !c.target.options.contains_key("aws_profile"));
        // A family's own timeout keeps the default off; another family's does not.
        let c = RunConfig::from_env(&env(&with(&[("GOOGLE_TIMEOUT", "20m")]))).expect("valid");
        assert_eq!(c.target.options["timeout"].expose(), "300s");
    }

    /// Every object_store option the configuration accepts, built into a store and used
    /// for a request (against a local server answering 403): nothing panics. Values the
    /// configuration refuses are the ones that would fail or panic in object_store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_object_store_options_never_panic() {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
                    let _ = socket.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                });
            }
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        let account_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        let gcs_key = r#"{"disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#;
        let bases: Vec<(&str, Vec<(String, String)>)> = vec![
            (
                "AWS_",
                vec![
                    ("TARGET_URL".into(), "s3://backups/nightly".into()),
                    ("TARGET_AWS_ENDPOINT".into(), endpoint.clone()),
                    ("TARGET_AWS_ALLOW_HTTP".into(), "true".into()),
                    ("TARGET_AWS_REGION".into(), "us-east-1".into()),
                    ("TARGET_AWS_ACCESS_KEY_ID".into(), "AKID".into()),
                    ("TARGET_AWS_SECRET_ACCESS_KEY".into(), "secret".into()),
                ],
            ),
            (
                "AZURE_",
                vec![
                    ("TARGET_URL".into(), "az://backups/nightly".into()),
                    ("TARGET_AZURE_STORAGE_ENDPOINT".into(), format!("{endpoint}/devstoreaccount1")),
                    ("TARGET_AZURE_ALLOW_HTTP".into(), "true".into()),
                    ("TARGET_AZURE_STORAGE_ACCOUNT_NAME".into(), "devstoreaccount1".into()),
                    ("TARGET_AZURE_STORAGE_ACCOUNT_KEY".into(), account_key.into()),
                ],
            ),
            (
                "GOOGLE_",
                vec![
                    ("TARGET_URL".into(), "gs://backups/nightly".into()),
                    ("TARGET_GOOGLE_BASE_URL".into(), endpoint.clone()),
                    ("TARGET_GOOGLE_ALLOW_HTTP".into(), "true".into()),
                    ("TARGET_GOOGLE_SERVICE_ACCOUNT_KEY".into(), gcs_key.into()),
                ],
            ),
        ];
        let mut values: Vec<String> = [
            "^",
            "http://exa mple",
            "http://exa mple:9000",
            "http://host^:9000",
            "not a url",
            "-1",
            "0",
            "1",
            "y",
            "99999999999999999999",
            "5000000000y",
            "yes please",
            "%zz",
            "line\nbreak",
            "trailing\n",
            "\u{e9}",
            "http://h\u{e4}st:9000",
            "/",
            "/x y",
            "a:b:c",
            "header:k:v",
            "header-with-status:k:v:412",
            "AES256",
            "sse-c",
            "aws:kms",
            "sha256",
            "etag",
            "disabled",
            "multipart",
            "1000000",
            "AAAA",
            "{}",
            "http:",
            "http://",
            "https://[::1",
            "http://host:99999",
            "http://host:9000/p?q",
            "socks5://h:1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        values.push("x".repeat(5 * 1024));
        let names = store_key_names();
        let mut attempts = Vec::new();
        for (family, base) in &bases {
            for name in names.iter().filter(|n| n.starts_with(family)) {
                for value in &values {
                    let variable = format!("TARGET_{name}");
                    let mut vars = base.clone();
                    vars.retain(|(k, _)| *k != variable);
                    vars.push((variable.clone(), value.clone()));
                    let Ok(raw) = RawEnv::from_iter(vars) else { continue };
                    let Ok(cfg) = CatalogConfig::from_env(&raw) else { continue };
                    let options: Vec<(String, String)> = cfg.target.options.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
                    attempts.push((variable, value.clone(), cfg.target.url.clone(), options));
                }
            }
        }
        let built = attempts.len();
        assert!(built > 1000, "only {built} accepted combinations were exercised");
        // Many at once: some values (a zero timeout, HTTP/2 only) make requests that are
        // retried until the bound below.
        let panics: Vec<String> = futures::stream::iter(attempts)
            .map(|(variable, value, url, options)| async move {
                let attempt = tokio::spawn(async move {
                    let Ok((store, _)) = object_store::parse_url_opts(&url, options) else { return };
                    let request = async {
                        let _ = store.list(None).next().await;
                        let _ = store.put(&"probe".into(), "probe".into()).await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), request).await;
                });
                attempt.await.err().map(|e| format!("{variable}={value:?}: {e}"))
            })
            .buffer_unordered(64)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        assert!(panics.is_empty(), "accepted by the configuration, yet object_store panics:\n{}", panics.join("\n"));
    }
}

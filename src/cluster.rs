//! Kubernetes: permissions preflight, pause and resume, the run's Lease, and the
//! capture of the deployment's objects.
//!
//! A paused object carries its original state in annotations written by the same
//! PATCH that pauses it (one atomic write, guarded by its resourceVersion), so a run
//! killed at any point leaves enough on the objects themselves for the next run, the
//! resume guard or `pachyderm-backup resume` to put everything back.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ReplicationController, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{ClusterSettings, PauseMode};

pub const ANNOTATION_REPLICAS: &str = "pachyderm-backup/replicas";
pub const ANNOTATION_PAUSED_BY: &str = "pachyderm-backup/paused-by";
pub const ANNOTATION_MODE: &str = "pachyderm-backup/mode";
const PACHYDERM_UPDATED_AT: &str = "pachyderm.com/updatedAt";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
const POLL: Duration = Duration::from_millis(500);
const CONFLICT_RETRIES: usize = 5;
const RESUME_ATTEMPTS: u32 = 4;
/// Who wrote: the field manager of every write (`managedFields` name us as the one
/// who scaled pachd), the Events' reporting controller, and the User-Agent.
pub const FIELD_MANAGER: &str = "pachyderm-backup";
const USER_AGENT: &str = concat!("pachyderm-backup/", env!("CARGO_PKG_VERSION"));

fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach the Kubernetes API ({0}); in a pod, check the ServiceAccount; outside, KUBECONFIG")]
    Connect(String),
    #[error("Kubernetes API call failed while {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the ServiceAccount lacks permissions the run needs: {}; grant them (the Helm chart's Role does)", .0.join(", "))]
    Forbidden(Vec<String>),
    #[error("{what} did not happen within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("another run holds Lease {name} (holder {holder}, valid until {until}); runs are exclusive, try again after it ends")]
    LeaseHeld { name: String, holder: String, until: DateTime<Utc> },
    #[error("Lease {0} was lost during the run (taken by another holder or not renewable); stopping")]
    LeaseLost(String),
    #[error("Deployment {0} does not exist in namespace {1}")]
    Missing(String, String),
    #[error(
        "ConfigMap {0} is still in Pachyderm's paused mode, left by a run with PAUSE_MODE=pachyderm; this PAUSE_MODE may not change it (the chart grants that write only in pachyderm mode): run `PAUSE_MODE=pachyderm pachyderm-backup resume`"
    )]
    PausedByOtherMode(String),
    #[error("cannot read the values of Helm release {0}: {1}")]
    HelmRelease(String, String),
    #[error("{0} has a malformed {ANNOTATION_REPLICAS} annotation {1:?}; set its replicas by hand and remove the annotation")]
    BadAnnotation(String, String),
}

impl ClusterError {
    /// An error worth another try: the API server's 5xx and 429, or no answer at all
    /// (kube's own retry layer covers 429, 503 and 504 first).
    fn transient(&self) -> bool {
        match self {
            ClusterError::Api { source: kube::Error::Api(status), .. } => status.code >= 500 || status.code == 429,
            ClusterError::Api { source: kube::Error::HyperError(_) | kube::Error::Service(_), .. } => true,
            _ => false,
        }
    }
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Api { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// One permission the run needs, for the SelfSubjectAccessReview preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub name: Option<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { String::new() } else { format!(".{}", self.group) };
        match &self.name {
            Some(n) => write!(f, "{} {}{}/{}", self.verb, self.resource, group, n),
            None => write!(f, "{} {}{}", self.verb, self.resource, group),
        }
    }
}

/// Every call a run makes, by pause mode: the preflight checks exactly these, and the
/// chart's Role grants exactly these.
pub fn permissions(s: &ClusterSettings) -> Vec<Permission> {
    let p = |verb, group, resource, name: Option<&str>| Permission { verb, group, resource, name: name.map(str::to_string) };
    let mut v = vec![
        p("get", "coordination.k8s.io", "leases", Some(&s.lease_name)),
        p("update", "coordination.k8s.io", "leases", Some(&s.lease_name)),
        p("create", "coordination.k8s.io", "leases", None),
        p("get", "apps", "deployments", Some(&s.pachd)),
        p("patch", "apps", "deployments", Some(&s.pachd)),
        p("list", "", "pods", None),
        p("list", "apps", "deployments", None),
        p("list", "", "replicationcontrollers", None),
        p("list", "", "services", None),
        p("list", "", "configmaps", None),
        // Events on pachd (`kubectl describe`); patch adds to a repeated Event's count.
        // Checked, but only warned about when denied.
        p("create", "events.k8s.io", "events", None),
        p("patch", "events.k8s.io", "events", None),
    ];
    if s.helm_release.is_some() {
        v.push(p("list", "", "secrets", None));
    }
    match s.pause_mode {
        PauseMode::Scale => {
            v.push(p("get", "apps", "deployments", Some(&s.pachw)));
            v.push(p("patch", "apps", "deployments", Some(&s.pachw)));
            v.push(p("patch", "", "replicationcontrollers", None));
        }
        PauseMode::Pachyderm => {
            v.push(p("get", "", "configmaps", Some(&s.pachd_configmap)));
            v.push(p("patch", "", "configmaps", Some(&s.pachd_configmap)));
        }
        PauseMode::None => {}
    }
    v
}

/// The state of a Lease at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    Free,
    Mine,
    Held { holder: String, until: DateTime<Utc> },
}

fn micro_time(t: DateTime<Utc>) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
}

fn from_micro_time(t: &MicroTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

pub fn lease_state(spec: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>) -> LeaseState {
    let Some(spec) = spec else { return LeaseState::Free };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else { return LeaseState::Free };
    if holder == me {
        return LeaseState::Mine;
    }
    let since = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(from_micro_time);
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match since {
        Some(t) if t + duration > now => LeaseState::Held { holder: holder.to_string(), until: t + duration },
        _ => LeaseState::Free,
    }
}

/// How a pause left each object, for the manifest and the operator's log.
#[derive(Debug, Clone, Default)]
pub struct PauseReport {
    /// Objects this run paused (kind/name).
    pub paused: Vec<String>,
    /// Already stopped by their operator: left as they are, not resumed.
    pub operator_paused: Vec<String>,
}

impl PauseReport {
    pub fn paused_by_us(&self) -> bool {
        !self.paused.is_empty()
    }
}

pub struct Cluster {
    client: Client,
    namespace: String,
    settings: ClusterSettings,
    recorder: Recorder,
}

/// A patchable, scalable workload: Deployment or ReplicationController.
trait Workload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug
{
    const KIND: &'static str;
    fn replicas(&self) -> i32;
    fn pod_selector(&self) -> Option<String>;
}

fn selector_string(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    Some(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

fn label_selector_string(s: &LabelSelector) -> Option<String> {
    s.match_labels.as_ref().and_then(selector_string)
}

impl Workload for Deployment {
    const KIND: &'static str = "deployment";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn pod_selector(&self) -> Option<String> {
        self.spec.as_ref().and_then(|s| label_selector_string(&s.selector))
    }
}

impl Workload for ReplicationController {
    const KIND: &'static str = "replicationcontroller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn pod_selector(&self) -> Option<String> {
        self.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(selector_string)
    }
}

impl Cluster {
    /// Connects with the in-cluster ServiceAccount, or KUBECONFIG outside a cluster.
    pub async fn connect(settings: &ClusterSettings) -> Result<Self, ClusterError> {
        let mut config = kube::Config::infer().await.map_err(|e| ClusterError::Connect(e.to_string()))?;
        config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
        let client = Client::try_from(config).map_err(|e| ClusterError::Connect(e.to_string()))?;
        let namespace = settings.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("HOSTNAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        Ok(Cluster { client, namespace, settings: settings.clone(), recorder })
    }

    /// Records a Kubernetes Event on the pachd Deployment, so that `kubectl describe
    /// deploy pachd` tells who paused it and why. Never fails the run: a missing
    /// permission or a slow API server is logged and the run goes on.
    pub async fn event(&self, warning: bool, reason: &str, action: &str, note: &str) {
        let mut note = note.to_string();
        if note.len() > 1000 {
            let cut = (0..=1000).rev().find(|i| note.is_char_boundary(*i)).unwrap_or(0);
            note.truncate(cut);
        }
        let publish = async {
            let pachd = self.deployments().get(&self.settings.pachd).await?;
            let event = Event {
                type_: if warning { EventType::Warning } else { EventType::Normal },
                reason: reason.into(),
                note: Some(note),
                action: action.into(),
                secondary: None,
            };
            self.recorder.publish(&event, &pachd.object_ref(&())).await
        };
        match tokio::time::timeout(Duration::from_secs(10), publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(reason, error = %e, "could not record a Kubernetes Event on pachd"),
            Err(_) => warn!(reason, "recording a Kubernetes Event on pachd took over 10s; skipped"),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn rcs(&self) -> Api<ReplicationController> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Preflight: one SelfSubjectAccessReview per call the run will make.
    pub async fn check_permissions(&self) -> Result<(), ClusterError> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut denied = Vec::new();
        for perm in permissions(&self.settings) {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(self.namespace.clone()),
                        verb: Some(perm.verb.into()),
                        group: Some(perm.group.into()),
                        resource: Some(perm.resource.into()),
                        name: perm.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api.create(&post_params(), &review).await.map_err(api_err(format!("asking whether the run may {perm}")))?;
            if answer.status.is_some_and(|s| s.allowed) {
                continue;
            }
            // Events only tell the story: without them the run is the same, so a Role
            // written before they existed keeps working (and is told what to add).
            if perm.resource == "events" {
                warn!(permission = %perm, "no Events will be recorded on pachd (kubectl describe): grant this permission, as the chart's Role does");
            } else {
                denied.push(perm.to_string());
            }
        }
        if denied.is_empty() { Ok(()) } else { Err(ClusterError::Forbidden(denied)) }
    }

    /// The Pachyderm version, from the pachd image tag.
    pub async fn pachyderm_version(&self) -> Result<Option<String>, ClusterError> {
        let d = self.deployments().get_opt(&self.settings.pachd).await.map_err(api_err("reading the pachd Deployment"))?;
        let d = d.ok_or_else(|| ClusterError::Missing(self.settings.pachd.clone(), self.namespace.clone()))?;
        let image = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| {
                let mut containers = p.containers.into_iter();
                let first = containers.next();
                first.into_iter().chain(containers).reduce(|keep, c| if c.name == "pachd" { c } else { keep })
            })
            .and_then(|c| c.image);
        Ok(image.and_then(|i| i.rsplit_once(':').map(|(_, tag)| tag.trim_start_matches('v').to_string())))
    }

    // ---- the Lease ----

    /// Takes the run's Lease, or says who holds it. Renewed in the background until the
    /// guard is released; `lost` turns true if a renewal fails.
    pub async fn acquire_lease(&self, holder: &str) -> Result<LeaseGuard, ClusterError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = self.settings.lease_name.clone();
        let seconds = self.settings.lease_duration.as_secs().max(3) as i32;
        let now = Utc::now();
        let spec = LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(micro_time(now)),
            renew_time: Some(micro_time(now)),
            ..Default::default()
        };
        match api.get_opt(&name).await.map_err(api_err(format!("reading Lease {name}")))? {
            None => {
                let lease = Lease { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, spec: Some(spec) };
                match api.create(&post_params(), &lease).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 409) => return Err(self.held_by(&api, &name, holder).await),
                    Err(e) => return Err(api_err(format!("creating Lease {name}"))(e)),
                }
            }
            Some(existing) => match lease_state(existing.spec.as_ref(), holder, now) {
                LeaseState::Held { holder, until } => return Err(ClusterError::LeaseHeld { name, holder, until }),
                LeaseState::Free | LeaseState::Mine => {
                    if let Some(old) = existing.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()) {
                        warn!(lease = %name, previous_holder = %old, "taking over an expired Lease: its run died");
                    }
                    let mut lease = existing.clone();
                    let transitions = existing.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                    lease.spec = Some(LeaseSpec { lease_transitions: Some(transitions + 1), ..spec });
                    match api.replace(&name, &post_params(), &lease).await {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 409) => return Err(self.held_by(&api, &name, holder).await),
                        Err(e) => return Err(api_err(format!("taking over Lease {name}"))(e)),
                    }
                }
            },
        }
        info!(lease = %name, holder, "lease acquired");
        let (lost_tx, lost_rx) = watch::channel(false);
        let renew_api = api.clone();
        let renew_name = name.clone();
        let me = holder.to_string();
        let renewer = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let duration = Duration::from_secs(seconds as u64);
            let every = Duration::from_secs((seconds / 3).max(1) as u64);
            let mut renewed = tokio::time::Instant::now();
            let mut wait = every;
            let mut failing = false;
            loop {
                tokio::time::sleep(wait).await;
                // An attempt that hangs (a connection silently dropped) must not outlive
                // the renew deadline: past it, the Lease is given up, not assumed held.
                let left = (duration * 2 / 3).saturating_sub(renewed.elapsed()).max(Duration::from_millis(100));
                let attempt = match tokio::time::timeout(left, renew(&renew_api, &renew_name, &me)).await {
                    Ok(r) => r,
                    Err(_) => Err(ClusterError::Timeout { what: "renewing the Lease".into(), timeout: left }),
                };
                match attempt {
                    Ok(()) => {
                        renewed = tokio::time::Instant::now();
                        wait = every;
                        failing = false;
                    }
                    Err(e) => match renewal_retry(renewed.elapsed(), duration, failing.then_some(wait), every) {
                        Some(next) if !matches!(e, ClusterError::LeaseLost(_)) => {
                            warn!(lease = %renew_name, error = %e, retry_in = %humantime::format_duration(next), "could not renew the Lease; retrying while it is still valid");
                            wait = next;
                            failing = true;
                        }
                        _ => {
                            warn!(lease = %renew_name, error = %e, "could not renew the Lease");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    },
                }
            }
        }));
        Ok(LeaseGuard { api, name, holder: holder.to_string(), renewer, lost: lost_rx })
    }

    async fn held_by(&self, api: &Api<Lease>, name: &str, me: &str) -> ClusterError {
        match api.get_opt(name).await {
            Ok(Some(l)) => match lease_state(l.spec.as_ref(), me, Utc::now()) {
                LeaseState::Held { holder, until } => ClusterError::LeaseHeld { name: name.into(), holder, until },
                _ => ClusterError::LeaseHeld { name: name.into(), holder: "unknown (it changed while we took it)".into(), until: Utc::now() },
            },
            _ => ClusterError::LeaseHeld { name: name.into(), holder: "unknown".into(), until: Utc::now() },
        }
    }

    /// The Lease's state as seen by someone who does not hold it (for `resume --if-stale`).
    pub async fn lease_holder(&self) -> Result<LeaseState, ClusterError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let lease = api.get_opt(&self.settings.lease_name).await.map_err(api_err("reading the Lease"))?;
        Ok(lease_state(lease.and_then(|l| l.spec).as_ref(), "", Utc::now()))
    }

    // ---- pause ----

    /// Pauses the cluster by the configured mode. Objects already stopped without our
    /// annotation were stopped by their operator: they are left alone, and stay so.
    pub async fn pause(&self, run_id: &str) -> Result<PauseReport, ClusterError> {
        let mut report = PauseReport::default();
        match self.settings.pause_mode {
            PauseMode::None => {}
            PauseMode::Scale => {
                let pachd = self.deployments().get_opt(&self.settings.pachd).await.map_err(api_err("reading the pachd Deployment"))?;
                let pachd = pachd.ok_or_else(|| ClusterError::Missing(self.settings.pachd.clone(), self.namespace.clone()))?;
                // pachd first: a running pachd scales its workers and pachw back up.
                let mut waits = Vec::new();
                self.scale_down(&self.deployments(), pachd, run_id, &mut report, &mut waits).await?;
                if let Some(pachw) = self.deployments().get_opt(&self.settings.pachw).await.map_err(api_err("reading the pachw Deployment"))? {
                    self.scale_down(&self.deployments(), pachw, run_id, &mut report, &mut waits).await?;
                }
                let workers = self
                    .rcs()
                    .list(&ListParams::default().labels(&self.settings.worker_selector))
                    .await
                    .map_err(api_err("listing worker ReplicationControllers"))?;
                for rc in workers.items {
                    self.scale_down(&self.rcs(), rc, run_id, &mut report, &mut waits).await?;
                }
                self.wait_pods_gone(&waits).await?;
            }
            PauseMode::Pachyderm => {
                let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
                let name = &self.settings.pachd_configmap;
                let cm = cms.get(name).await.map_err(api_err(format!("reading ConfigMap {name}")))?;
                let (_, written) = patch_guarded(&cms, cm, &format!("setting MODE=paused in ConfigMap {name}"), |cm| {
                    let mode = cm.data.as_ref().and_then(|d| d.get("MODE")).map(String::as_str);
                    Ok(mode_pause_patch(mode, cm.annotations().contains_key(ANNOTATION_MODE), run_id, Utc::now()))
                })
                .await?;
                if !written {
                    report.operator_paused.push(format!("configmap/{name}"));
                    info!(configmap = %name, "Pachyderm is already in paused mode by its operator: it will stay paused");
                    return Ok(report);
                }
                report.paused.push(format!("configmap/{name}"));
                self.restart_pachd().await?;
                self.wait_pachd_ready(self.settings.pause_timeout, "pachd restarting in paused mode").await?;
            }
        }
        Ok(report)
    }

    async fn scale_down<K: Workload>(
        &self,
        api: &Api<K>,
        obj: K,
        run_id: &str,
        report: &mut PauseReport,
        waits: &mut Vec<(String, String)>,
    ) -> Result<(), ClusterError> {
        let label = format!("{}/{}", K::KIND, obj.name_any());
        let mut original = String::new();
        let (obj, written) = patch_guarded(api, obj, &format!("scaling {label} to 0"), |obj| {
            let kept = obj.annotations().get(ANNOTATION_REPLICAS).map(String::as_str);
            Ok(scale_down_patch(obj.replicas(), kept, run_id).map(|(keeps, patch)| {
                original = keeps;
                patch
            }))
        })
        .await?;
        if written {
            info!(object = %label, original_replicas = %original, "scaled to 0");
            report.paused.push(label.clone());
        } else {
            info!(object = %label, "already at 0 replicas without our annotation: stopped by its operator, it will stay stopped");
            report.operator_paused.push(label.clone());
        }
        if let Some(selector) = obj.pod_selector() {
            waits.push((label, selector));
        }
        Ok(())
    }

    async fn wait_pods_gone(&self, waits: &[(String, String)]) -> Result<(), ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = tokio::time::Instant::now() + self.settings.pause_timeout;
        for (label, selector) in waits {
            loop {
                let left = pods.list(&ListParams::default().labels(selector)).await.map_err(api_err(format!("listing the pods of {label}")))?;
                if left.items.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
                    return Err(ClusterError::Timeout {
                        what: format!("termination of the pods of {label} ({})", names.join(", ")),
                        timeout: self.settings.pause_timeout,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        info!("every paused pod is gone");
        Ok(())
    }

    async fn restart_pachd(&self) -> Result<(), ClusterError> {
        let patch = json!({ "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: Utc::now().to_rfc3339() } } } } });
        self.deployments().patch(&self.settings.pachd, &patch_params(), &Patch::Merge(&patch)).await.map_err(api_err("restarting pachd"))?;
        Ok(())
    }

    async fn wait_pachd_ready(&self, timeout: Duration, what: &str) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = self.deployments().get(&self.settings.pachd).await.map_err(api_err("reading the pachd Deployment"))?;
            if deployment_ready(&d) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout { what: what.to_string(), timeout });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // ---- resume ----

    /// Whether any object carries our pause annotations (a run paused it).
    pub async fn paused_objects(&self) -> Result<Vec<String>, ClusterError> {
        let mut found = Vec::new();
        for name in [&self.settings.pachd, &self.settings.pachw] {
            if let Some(d) = self.deployments().get_opt(name).await.map_err(api_err(format!("reading Deployment {name}")))? {
                if d.annotations().contains_key(ANNOTATION_REPLICAS) {
                    found.push(format!("deployment/{name}"));
                }
            }
        }
        let rcs =
            self.rcs().list(&ListParams::default().labels(&self.settings.worker_selector)).await.map_err(api_err("listing worker ReplicationControllers"))?;
        found.extend(
            rcs.items.iter().filter(|rc| rc.annotations().contains_key(ANNOTATION_REPLICAS)).map(|rc| format!("replicationcontroller/{}", rc.name_any())),
        );
        if self.paused_configmap().await?.is_some() {
            found.push(format!("configmap/{}", self.settings.pachd_configmap));
        }
        Ok(found)
    }

    /// `pachd-config` if it carries our pause annotation, found by listing (allowed in
    /// every mode) so that a pause left by a run in another mode is never overlooked.
    async fn paused_configmap(&self) -> Result<Option<ConfigMap>, ClusterError> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = &self.settings.pachd_configmap;
        let list = cms.list(&ListParams::default().fields(&format!("metadata.name={name}"))).await.map_err(api_err("listing ConfigMaps"))?;
        Ok(list.items.into_iter().find(|cm| cm.name_any() == *name && cm.annotations().contains_key(ANNOTATION_MODE)))
    }

    /// Puts back every object carrying our annotations (see `resume_once`), trying again
    /// after a transient API error: a resume that gives up leaves the cluster paused.
    /// Resumes (see `resume_once`), retrying transient API errors, and records the
    /// outcome as an Event on pachd; `by` names who resumes, for the Event.
    pub async fn resume(&self, by: &str) -> Result<Vec<String>, ClusterError> {
        let mut attempt = 1;
        let result = loop {
            match self.resume_once().await {
                Err(e) if attempt < RESUME_ATTEMPTS && e.transient() => {
                    warn!(attempt, error = %e, "resume failed, retrying the resume");
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                    attempt += 1;
                }
                result => break result,
            }
        };
        match &result {
            Ok(resumed) if !resumed.is_empty() => self.event(false, "Resumed", "Resume", &format!("resumed by {by}: {}", resumed.join(", "))).await,
            Ok(_) => {}
            Err(e) => self.event(true, "ResumeFailed", "Resume", &format!("{by} could not resume the cluster: {e}")).await,
        }
        result
    }

    /// Puts back every object carrying our annotations, pachd first, then waits until
    /// pachd is ready. Idempotent: objects without annotations are not touched.
    async fn resume_once(&self) -> Result<Vec<String>, ClusterError> {
        let mut resumed = Vec::new();
        if self.settings.pause_mode != PauseMode::Pachyderm && self.paused_configmap().await?.is_some() {
            return Err(ClusterError::PausedByOtherMode(self.settings.pachd_configmap.clone()));
        }
        let mut pachd_changed = false;
        if self.settings.pause_mode == PauseMode::Pachyderm {
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let name = &self.settings.pachd_configmap;
            if let Some(cm) = cms.get_opt(name).await.map_err(api_err(format!("reading ConfigMap {name}")))? {
                let (_, written) = patch_guarded(&cms, cm, &format!("restoring MODE in ConfigMap {name}"), |cm| {
                    Ok(mode_resume_patch(cm.annotations().get(ANNOTATION_MODE).map(String::as_str), Utc::now()))
                })
                .await?;
                if written {
                    resumed.push(format!("configmap/{name}"));
                    self.restart_pachd().await?;
                    pachd_changed = true;
                }
            }
        }
        for name in [self.settings.pachd.clone(), self.settings.pachw.clone()] {
            if let Some(d) = self.deployments().get_opt(&name).await.map_err(api_err(format!("reading Deployment {name}")))? {
                if self.scale_up(&self.deployments(), d).await? {
                    resumed.push(format!("deployment/{name}"));
                    pachd_changed |= name == self.settings.pachd;
                }
            }
        }
        let rcs =
            self.rcs().list(&ListParams::default().labels(&self.settings.worker_selector)).await.map_err(api_err("listing worker ReplicationControllers"))?;
        for rc in rcs.items {
            let name = rc.name_any();
            if self.scale_up(&self.rcs(), rc).await? {
                resumed.push(format!("replicationcontroller/{name}"));
            }
        }
        if pachd_changed {
            self.wait_pachd_ready(self.settings.resume_timeout, "pachd becoming ready after the resume").await?;
            info!(objects = %resumed.join(","), "cluster resumed, pachd is ready");
        } else if !resumed.is_empty() {
            info!(objects = %resumed.join(","), "cluster resumed");
        }
        Ok(resumed)
    }

    /// Restores one object's replicas from its annotation; false if it has none.
    async fn scale_up<K: Workload>(&self, api: &Api<K>, obj: K) -> Result<bool, ClusterError> {
        let label = format!("{}/{}", K::KIND, obj.name_any());
        let mut replicas = 0;
        let (_, written) = patch_guarded(api, obj, &format!("restoring the replicas of {label}"), |obj| {
            let kept = obj.annotations().get(ANNOTATION_REPLICAS).map(String::as_str);
            Ok(scale_up_patch(&label, kept)?.map(|(restores, patch)| {
                replicas = restores;
                patch
            }))
        })
        .await?;
        if written {
            info!(object = %label, replicas, "replicas restored");
        }
        Ok(written)
    }

    // ---- capture ----

    /// The deployment's objects (never Secrets), cleaned of server-side fields, as
    /// `(file name, JSON)` pairs for `cluster/`.
    /// What `kubectl apply` can re-create in another cluster: pachd and pachw at their
    /// original replicas (the capture runs while they are paused), the Services without
    /// the addresses the old cluster allocated, the ConfigMaps nobody else makes. Not
    /// the pipeline workers (pachd re-creates them) nor objects a controller owns; their
    /// original replicas go to the manifest with the others'.
    pub async fn capture(&self) -> Result<Capture, ClusterError> {
        let mut out = Capture::default();
        let lp = ListParams::default();
        let deployments = self.deployments().list(&lp).await.map_err(api_err("listing Deployments"))?;
        let keep = [&self.settings.pachd, &self.settings.pachw];
        for d in deployments.items.into_iter().filter(|d| keep.contains(&&d.name_any())) {
            let replicas = original_replicas(&d, d.spec.as_ref().and_then(|s| s.replicas));
            out.replicas.insert(format!("deployment/{}", d.name_any()), replicas);
            let mut file = clean("deployments", &d)?;
            file.1 = with_replicas(&file.1, replicas)?;
            out.files.push(file);
        }
        let rcs =
            self.rcs().list(&ListParams::default().labels(&self.settings.worker_selector)).await.map_err(api_err("listing worker ReplicationControllers"))?;
        for rc in &rcs.items {
            let replicas = original_replicas(rc, rc.spec.as_ref().and_then(|s| s.replicas));
            out.replicas.insert(format!("replicationcontroller/{}", rc.name_any()), replicas);
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        for s in services.list(&lp).await.map_err(api_err("listing Services"))?.items.iter().filter(|s| !made_by_the_cluster(*s)) {
            out.files.push(clean("services", s)?);
        }
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        for c in cms.list(&lp).await.map_err(api_err("listing ConfigMaps"))?.items.iter().filter(|c| !made_by_the_cluster(*c)) {
            out.files.push(clean("configmaps", c)?);
        }
        if let Some(release) = &self.settings.helm_release {
            out.files.push(self.helm_values(release).await?);
        }
        Ok(out)
    }

    /// The user-supplied values of the newest revision of a Helm release, from the
    /// Secret Helm keeps it in (`sh.helm.release.v1.<name>.v<N>`: base64 of gzip of
    /// JSON inside the Secret's `release` key).
    async fn helm_values(&self, release: &str) -> Result<(String, Vec<u8>), ClusterError> {
        use std::io::Read;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = secrets
            .list(&ListParams::default().labels(&format!("owner=helm,name={release}")))
            .await
            .map_err(api_err(format!("listing the Secrets of Helm release {release}")))?;
        let version = |s: &k8s_openapi::api::core::v1::Secret| s.labels().get("version").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let newest = list.items.iter().max_by_key(|s| version(s)).ok_or_else(|| {
            ClusterError::HelmRelease(release.to_string(), "no Secret of this release (is HELM_RELEASE the release name, in this namespace?)".into())
        })?;
        let bad = |detail: String| ClusterError::HelmRelease(release.to_string(), detail);
        let encoded = newest.data.as_ref().and_then(|d| d.get("release")).ok_or_else(|| bad("the Secret has no `release` key".into()))?;
        use base64::Engine;
        let gz = base64::engine::general_purpose::STANDARD.decode(&encoded.0).map_err(|e| bad(format!("not base64: {e}")))?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut json).map_err(|e| bad(format!("not gzip: {e}")))?;
        let parsed: Value = serde_json::from_slice(&json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let out = json!({
            "release": release,
            "revision": version(newest),
            "chart": parsed["chart"]["metadata"]["name"],
            "chart_version": parsed["chart"]["metadata"]["version"],
            "values": parsed["config"],
        });
        let bytes = serde_json::to_vec_pretty(&out).map_err(|e| bad(e.to_string()))?;
        Ok((format!("helm/{release}-values.json"), bytes))
    }
}

/// Writes a JSON merge patch computed from the object's current state, guarded by its
/// resourceVersion: on a conflict (409) the object is read again and the patch computed
/// again, a few times. `make` returns `None` to leave the object as it is. Returns the
/// state the last patch was computed from, and whether a patch was written.
async fn patch_guarded<K>(
    api: &Api<K>,
    mut obj: K,
    what: &str,
    mut make: impl FnMut(&K) -> Result<Option<Value>, ClusterError>,
) -> Result<(K, bool), ClusterError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = obj.name_any();
    for attempt in 0.. {
        let Some(mut patch) = make(&obj)? else { return Ok((obj, false)) };
        patch["metadata"]["resourceVersion"] = json!(obj.resource_version());
        match api.patch(&name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok((obj, true)),
            Err(e) if is_status(&e, 409) && attempt < CONFLICT_RETRIES => {
                obj = api.get(&name).await.map_err(api_err(format!("{what} (re-reading it after a conflict)")))?;
            }
            Err(e) => return Err(api_err(what.to_string())(e)),
        }
    }
    unreachable!("the loop returns")
}

// ---- the pause and resume patches ----
//
// Pure, so that every case is a row of a table test; `patch_guarded` writes them and
// calls them again with the fresh state after a conflict.

/// The merge patch that scales a workload at `replicas` to zero, and the replicas it
/// keeps in `pachyderm-backup/replicas`: `kept`, that annotation, when a pause already
/// wrote it (a repeated pause must not record the zero it set), else `replicas`.
/// `None` for a workload at zero without the annotation: its operator stopped it, so
/// the pause leaves it and no resume will start it.
fn scale_down_patch(replicas: i32, kept: Option<&str>, run_id: &str) -> Option<(String, Value)> {
    if replicas == 0 && kept.is_none() {
        return None;
    }
    let original = kept.map_or_else(|| replicas.to_string(), str::to_string);
    let patch = json!({
        "metadata": { "annotations": { ANNOTATION_REPLICAS: original, ANNOTATION_PAUSED_BY: run_id } },
        "spec": { "replicas": 0 }
    });
    Some((original, patch))
}

/// The merge patch that gives `label` back the replicas its `pachyderm-backup/replicas`
/// annotation `kept`, and that count; `None` without the annotation (no run paused it).
/// An annotation that is not an integer is an error rather than a guess. A negative one
/// is not checked here: the API server refuses the patch, so the annotation stays and
/// the resume fails naming the object.
fn scale_up_patch(label: &str, kept: Option<&str>) -> Result<Option<(i32, Value)>, ClusterError> {
    let Some(original) = kept else { return Ok(None) };
    let replicas: i32 = original.trim().parse().map_err(|_| ClusterError::BadAnnotation(label.to_string(), original.to_string()))?;
    let patch = json!({
        "metadata": { "annotations": { ANNOTATION_REPLICAS: null, ANNOTATION_PAUSED_BY: null } },
        "spec": { "replicas": replicas }
    });
    Ok(Some((replicas, patch)))
}

/// The merge patch that sets `MODE: paused` in `pachd-config`, keeping its `mode`
/// (Pachyderm's default, `full`, when unset) in `pachyderm-backup/mode`. `None` when it
/// is already paused and not `ours` (without that annotation): its operator paused
/// Pachyderm, and it stays paused.
fn mode_pause_patch(mode: Option<&str>, ours: bool, run_id: &str, now: DateTime<Utc>) -> Option<Value> {
    let mode = mode.unwrap_or("full");
    (mode != "paused" || ours).then(|| {
        json!({
            "metadata": { "annotations": { ANNOTATION_MODE: mode, ANNOTATION_PAUSED_BY: run_id, PACHYDERM_UPDATED_AT: now.to_rfc3339() } },
            "data": { "MODE": "paused" }
        })
    })
}

/// The merge patch that puts back in `pachd-config` the MODE a pause `kept` in
/// `pachyderm-backup/mode`, removing the pause's annotations; `None` without it.
fn mode_resume_patch(kept: Option<&str>, now: DateTime<Utc>) -> Option<Value> {
    kept.map(|mode| {
        json!({
            "metadata": { "annotations": { ANNOTATION_MODE: null, ANNOTATION_PAUSED_BY: null, PACHYDERM_UPDATED_AT: now.to_rfc3339() } },
            "data": { "MODE": mode }
        })
    })
}

/// A Deployment is ready when the controller has seen its spec and every wanted replica
/// is updated and ready.
pub fn deployment_ready(d: &Deployment) -> bool {
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &d.status else { return wanted == 0 };
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    observed && status.updated_replicas.unwrap_or(0) >= wanted && status.ready_replicas.unwrap_or(0) >= wanted && status.unavailable_replicas.unwrap_or(0) == 0
}

/// Drops what the API server owns (status, uid, resourceVersion, managed fields) and our
/// own annotations, so the file can be re-applied to a new cluster.
/// The cluster objects of a backup and the original replicas of every workload
/// (`kind/name`), pipeline workers included.
#[derive(Debug, Default)]
pub struct Capture {
    pub files: Vec<(String, Vec<u8>)>,
    pub replicas: BTreeMap<String, i32>,
}

/// The replicas an object had before any pause: our annotation, else its spec.
fn original_replicas<K: ResourceExt>(obj: &K, spec: Option<i32>) -> i32 {
    obj.annotations().get(ANNOTATION_REPLICAS).and_then(|r| r.trim().parse().ok()).or(spec).unwrap_or(1)
}

/// Objects the cluster makes by itself in every namespace, or that a controller owns:
/// re-created there, they would collide.
fn made_by_the_cluster<K: ResourceExt>(obj: &K) -> bool {
    const PER_NAMESPACE: [&str; 1] = ["kube-root-ca.crt"];
    PER_NAMESPACE.contains(&obj.name_any().as_str()) || !obj.owner_references().is_empty()
}

fn with_replicas(json: &[u8], replicas: i32) -> Result<Vec<u8>, ClusterError> {
    let bad = |e: serde_json::Error| ClusterError::Connect(format!("cannot rewrite a captured object: {e}"));
    let mut v: Value = serde_json::from_slice(json).map_err(bad)?;
    v["spec"]["replicas"] = json!(replicas);
    serde_json::to_vec_pretty(&v).map_err(bad)
}

/// An object as `kubectl apply` takes it in another cluster: no status, no server-set
/// metadata, none of our annotations, and no address the old cluster allocated (a
/// Service's cluster IPs, outside the new cluster's range, are refused).
fn clean<K: serde::Serialize + ResourceExt>(dir: &str, obj: &K) -> Result<(String, Vec<u8>), ClusterError> {
    let name = obj.name_any();
    let mut v = serde_json::to_value(obj).map_err(|e| ClusterError::Connect(format!("cannot serialize {dir}/{name}: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["uid", "resourceVersion", "managedFields", "creationTimestamp", "generation", "selfLink", "namespace", "ownerReferences"] {
            meta.remove(field);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(ANNOTATION_REPLICAS);
            a.remove(ANNOTATION_PAUSED_BY);
            a.remove(ANNOTATION_MODE);
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            a.remove("deployment.kubernetes.io/revision");
        }
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut).filter(|_| dir == "services") {
        // A headless Service keeps its "None"; any other address is the new cluster's to give.
        if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        spec.remove("healthCheckNodePort");
    }
    let json = serde_json::to_vec_pretty(&v).map_err(|e| ClusterError::Connect(format!("cannot serialize {dir}/{name}: {e}")))?;
    Ok((format!("{dir}/{name}.json"), json))
}

/// After a failed renewal, `since` the last good one: when to try again, or `None` when
/// the Lease must be given up. As client-go's leader election: retry (1 s after the
/// first failure, then doubling from `previous`, the wait before this attempt, never
/// slower than the renewal period) until the renew deadline, two thirds of the Lease's
/// duration, so a holder stops before another could take the Lease.
pub fn renewal_retry(since: Duration, duration: Duration, previous: Option<Duration>, every: Duration) -> Option<Duration> {
    let next = previous.map_or(Duration::from_secs(1), |p| (p * 2).min(every));
    let deadline = duration * 2 / 3;
    (since < deadline).then(|| next.min(deadline - since))
}

async fn renew(api: &Api<Lease>, name: &str, me: &str) -> Result<(), ClusterError> {
    let mut lease = api.get(name).await.map_err(api_err("reading the Lease to renew it"))?;
    if lease_state(lease.spec.as_ref(), me, Utc::now()) != LeaseState::Mine {
        return Err(ClusterError::LeaseLost(name.to_string()));
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(micro_time(Utc::now()));
    }
    api.replace(name, &post_params(), &lease).await.map_err(api_err("renewing the Lease"))?;
    Ok(())
}

/// Holds the Lease; `release` gives it up at the end of the run.
pub struct LeaseGuard {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    pub lost: watch::Receiver<bool>,
}

impl LeaseGuard {
    /// Resolves when the Lease is lost.
    pub async fn lost(&mut self) {
        crate::until_lost(&mut self.lost).await
    }

    pub async fn release(self) {
        self.renewer.abort();
        let result: Result<(), kube::Error> = async {
            let mut lease = self.api.get(&self.name).await?;
            if lease_state(lease.spec.as_ref(), &self.holder, Utc::now()) == LeaseState::Mine {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                self.api.replace(&self.name, &post_params(), &lease).await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => info!(lease = %self.name, "lease released"),
            Err(e) => warn!(lease = %self.name, error = %e, "could not release the Lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_is_retried_until_the_renew_deadline() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Lease of 15 s, renewed every 5 s: the deadline is 10 s after the last renewal.
        let cases: &[(Duration, Option<Duration>, Option<Duration>)] = &[
            (s(5), None, Some(s(1))),       // the first failure: 1 s
            (s(6), Some(s(1)), Some(s(2))), // then backing off
            (s(8), Some(s(2)), Some(s(2))), // never past the deadline
            (ms(9_500), Some(s(2)), Some(ms(500))),
            (s(10), Some(s(2)), None), // the deadline: given up, 5 s of validity left
            (s(30), Some(s(4)), None),
        ];
        for (since, previous, want) in cases {
            assert_eq!(renewal_retry(*since, s(15), *previous, s(5)), *want, "since {since:?}, previous {previous:?}");
        }
        // Backoff never exceeds the renewal period.
        assert_eq!(renewal_retry(s(1), s(600), Some(s(150)), s(200)), Some(s(200)));
        // Once at the renewal period it stays there, no sawtooth back to 1 s.
        assert_eq!(renewal_retry(s(10), s(600), Some(s(200)), s(200)), Some(s(200)));
    }

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32, now: DateTime<Utc>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(micro_time(now - chrono::Duration::seconds(renewed_secs_ago))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn lease_states() {
        let now = Utc::now();
        assert_eq!(lease_state(None, "me", now), LeaseState::Free);
        assert_eq!(lease_state(Some(&spec("me", 1, 60, now)), "me", now), LeaseState::Mine);
        assert!(matches!(lease_state(Some(&spec("other", 10, 60, now)), "me", now), LeaseState::Held { .. }));
        assert_eq!(lease_state(Some(&spec("other", 61, 60, now)), "me", now), LeaseState::Free);
        assert_eq!(lease_state(Some(&LeaseSpec { holder_identity: Some(String::new()), ..Default::default() }), "me", now), LeaseState::Free);
    }

    #[test]
    fn permissions_follow_the_pause_mode() {
        let mut s = crate::config::ClusterSettings::from_env(&crate::config::RawEnv::default()).expect("defaults").1;
        let names = |s: &ClusterSettings| permissions(s).iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let scale = names(&s);
        assert!(scale.contains(&"patch deployments.apps/pachw".to_string()));
        assert!(scale.contains(&"patch replicationcontrollers".to_string()));
        assert!(!scale.iter().any(|p| p.starts_with("patch configmaps")));
        s.pause_mode = PauseMode::Pachyderm;
        let pach = names(&s);
        assert!(pach.contains(&"patch configmaps/pachd-config".to_string()));
        assert!(!pach.contains(&"patch replicationcontrollers".to_string()));
        assert!(!pach.iter().chain(scale.iter()).any(|p| p.contains("secrets") || p.contains('*')));
    }

    #[test]
    fn scale_down_patches() {
        let down = |kept: &str| {
            json!({
                "metadata": { "annotations": { "pachyderm-backup/replicas": kept, "pachyderm-backup/paused-by": "run-1" } },
                "spec": { "replicas": 0 }
            })
        };
        // (replicas, the replicas annotation, the replicas kept or None for left alone)
        let cases: &[(i32, Option<&str>, Option<&str>)] = &[
            (3, None, Some("3")),
            (1, None, Some("1")),
            (0, None, None),               // stopped by its operator
            (0, Some("2"), Some("2")),     // paused already: what the first pause saw
            (5, Some("2"), Some("2")),     // scaled up by hand since: still what the first pause saw
            (0, Some("two"), Some("two")), // a bad annotation is kept for the resume to refuse
        ];
        for (replicas, kept, want) in cases {
            let got = scale_down_patch(*replicas, *kept, "run-1");
            assert_eq!(got, want.map(|k| (k.to_string(), down(k))), "replicas {replicas}, annotation {kept:?}");
        }
    }

    #[test]
    fn scale_up_patches() {
        let up = |replicas: i32| {
            json!({
                "metadata": { "annotations": { "pachyderm-backup/replicas": null, "pachyderm-backup/paused-by": null } },
                "spec": { "replicas": replicas }
            })
        };
        // (the replicas annotation, Ok(replicas restored, None for left alone) or Err for malformed)
        let cases: &[(Option<&str>, Result<Option<i32>, ()>)] = &[
            (None, Ok(None)), // not paused by a run
            (Some("3"), Ok(Some(3))),
            (Some("0"), Ok(Some(0))),
            (Some(" 2\n"), Ok(Some(2))), // edited by hand
            (Some("-1"), Ok(Some(-1))),  // refused by the API server, not here
            (Some("two"), Err(())),
            (Some(""), Err(())),
            (Some("2.5"), Err(())),
            (Some("2147483648"), Err(())),
        ];
        for (kept, want) in cases {
            match (scale_up_patch("deployment/pachd", *kept), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want.map(|r| (r, up(r))), "annotation {kept:?}"),
                (Err(ClusterError::BadAnnotation(label, value)), Err(())) => {
                    assert_eq!((label.as_str(), Some(value.as_str())), ("deployment/pachd", *kept));
                }
                (got, want) => panic!("annotation {kept:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn configmap_pause_and_resume_patches() {
        let now = Utc::now();
        let paused = |kept: &str| {
            json!({
                "metadata": { "annotations": {
                    "pachyderm-backup/mode": kept, "pachyderm-backup/paused-by": "run-1", "pachyderm.com/updatedAt": now.to_rfc3339()
                } },
                "data": { "MODE": "paused" }
            })
        };
        // (MODE, our mode annotation present, the mode kept or None for left alone)
        let pauses: &[(Option<&str>, bool, Option<&str>)] = &[
            (Some("full"), false, Some("full")),
            (None, false, Some("full")),   // no MODE: Pachyderm's default
            (Some("paused"), false, None), // paused by its operator
        ];
        for (mode, ours, want) in pauses {
            assert_eq!(mode_pause_patch(*mode, *ours, "run-1", now), want.map(paused), "MODE {mode:?}, ours {ours}");
        }
        let resumed = |mode: &str| {
            json!({
                "metadata": { "annotations": {
                    "pachyderm-backup/mode": null, "pachyderm-backup/paused-by": null, "pachyderm.com/updatedAt": now.to_rfc3339()
                } },
                "data": { "MODE": mode }
            })
        };
        // (our mode annotation, the MODE put back or None for left alone)
        let resumes: &[(Option<&str>, Option<&str>)] = &[
            (Some("full"), Some("full")), // written explicitly even when the pause found no MODE
            (None, None),                 // not paused by a run, or by its operator
        ];
        for (kept, want) in resumes {
            assert_eq!(mode_resume_patch(*kept, now), want.map(resumed), "annotation {kept:?}");
        }
    }

    #[test]
    fn readiness_needs_observed_updated_and_ready() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "pachd", "generation": 3},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pachd"}}, "template": {}},
            "status": {"observedGeneration": 3, "updatedReplicas": 1, "readyReplicas": 1}
        }))
        .expect("valid");
        assert!(deployment_ready(&d));
        d.metadata.generation = Some(4);
        assert!(!deployment_ready(&d));
    }
}

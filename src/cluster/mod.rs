//! Kubernetes, one submodule per concern: the run's Lease (`lease`), pause and resume
//! (`pause`), the capture of the deployment's objects (`capture`). Here is what they
//! share, so that each is written once: the client and who it says it is (field
//! manager, User-Agent), the errors, the permissions preflight, the Events on pachd,
//! and `patch_guarded`, the write guarded by resourceVersion that the pause and the
//! resume both make.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::ReplicationController;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::warn;

use crate::config::{ClusterSettings, PauseMode};

mod capture;
pub mod copy_job;
mod lease;
mod pause;

pub use capture::Capture;
pub use lease::{LeaseGuard, LeaseState, lease_state, renewal_retry};
pub use pause::{PauseReport, deployment_ready};

pub const ANNOTATION_REPLICAS: &str = "pachyderm-backup/replicas";
pub const ANNOTATION_PAUSED_BY: &str = "pachyderm-backup/paused-by";
pub const ANNOTATION_MODE: &str = "pachyderm-backup/mode";
const CONFLICT_RETRIES: usize = 5;
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
    /// A captured object that cannot be written as JSON (a bug, or an object the API
    /// server sent that serde cannot represent).
    #[error("capturing the cluster's objects failed: {0}")]
    Captured(String),
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

pub struct Cluster {
    client: Client,
    namespace: String,
    settings: ClusterSettings,
    recorder: Recorder,
}

/// A client with the in-cluster ServiceAccount, or KUBECONFIG outside a cluster, that
/// names this program (User-Agent) in the API server's audit log.
pub(crate) async fn client() -> Result<Client, ClusterError> {
    let mut config = kube::Config::infer().await.map_err(|e| ClusterError::Connect(e.to_string()))?;
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
    Client::try_from(config).map_err(|e| ClusterError::Connect(e.to_string()))
}

impl Cluster {
    /// Connects with the in-cluster ServiceAccount, or KUBECONFIG outside a cluster.
    pub async fn connect(settings: &ClusterSettings) -> Result<Self, ClusterError> {
        let client = client().await?;
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
        check_in(&self.client, &self.namespace, permissions(&self.settings)).await
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
}

/// One SelfSubjectAccessReview per permission, in `namespace`: every one denied is
/// named in the error.
async fn check_in(client: &Client, namespace: &str, wanted: Vec<Permission>) -> Result<(), ClusterError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for perm in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
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
            denied.push(format!("{perm} (namespace {namespace})"));
        }
    }
    if denied.is_empty() { Ok(()) } else { Err(ClusterError::Forbidden(denied)) }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Pause and resume. A paused object carries its original state in annotations written
//! by the same PATCH that pauses it (one atomic write, guarded by its resourceVersion),
//! so a run killed at any point leaves enough on the objects themselves for the next
//! run, the resume guard or `pachyderm-backup resume` to put everything back.
//!
//! Which patch an object gets is decided by pure functions (`scale_down_patch`,
//! `scale_up_patch`, `mode_pause_patch`, `mode_resume_patch`), apart from the reads and
//! writes, so that every case is a row of a table test.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{ANNOTATION_MODE, ANNOTATION_PAUSED_BY, ANNOTATION_REPLICAS, Cluster, ClusterError, api_err, patch_guarded, patch_params};
use crate::config::PauseMode;

const PACHYDERM_UPDATED_AT: &str = "pachyderm.com/updatedAt";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
const POLL: Duration = Duration::from_millis(500);
const RESUME_ATTEMPTS: u32 = 4;

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
                    Ok(mode_pause_patch(mode, cm.annotations().get(ANNOTATION_MODE).map(String::as_str), run_id, Utc::now()))
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
    /// after a transient API error: a resume that gives up leaves the cluster paused. The
    /// outcome is recorded as an Event on pachd, where `by` names who resumed.
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
}

// ---- the pause and resume patches ----
//
// `patch_guarded` writes them, and calls them again with the object read afresh after a
// conflict.

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
/// (Pachyderm's default, `full`, when unset) in `pachyderm-backup/mode`. Already
/// paused by a pause of ours (`kept`, the annotation): the mode it kept stays the one
/// to restore (recording `paused` would make the resume leave Pachyderm paused, as if
/// its operator had). `None` when paused without that annotation: its operator paused
/// Pachyderm, and it stays paused.
fn mode_pause_patch(mode: Option<&str>, kept: Option<&str>, run_id: &str, now: DateTime<Utc>) -> Option<Value> {
    let mode = mode.unwrap_or("full");
    let restore = match kept {
        Some(kept) => kept,
        None if mode == "paused" => return None,
        None => mode,
    };
    Some(json!({
        "metadata": { "annotations": { ANNOTATION_MODE: restore, ANNOTATION_PAUSED_BY: run_id, PACHYDERM_UPDATED_AT: now.to_rfc3339() } },
        "data": { "MODE": "paused" }
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // (MODE, our mode annotation, the mode kept or None for left alone)
        let pauses: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (Some("full"), None, Some("full")),
            (None, None, Some("full")),   // no MODE: Pachyderm's default
            (Some("paused"), None, None), // paused by its operator
            // Paused by a pause of ours already (a write applied whose answer was lost,
            // then recomputed): the mode to restore is still the one it kept.
            (Some("paused"), Some("full"), Some("full")),
            (Some("paused"), Some("enterprise"), Some("enterprise")),
        ];
        for (mode, kept, want) in pauses {
            assert_eq!(mode_pause_patch(*mode, *kept, "run-1", now), want.map(paused), "MODE {mode:?}, kept {kept:?}");
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

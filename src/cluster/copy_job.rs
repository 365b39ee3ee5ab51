//! The sharded pre-copy's Kubernetes Job (COPY_SHARDS > 1): made from the run's own
//! Pod, so its pods have the same image, ServiceAccount, environment (Secrets
//! included, by reference), volumes and security context as the run, whatever patched
//! the CronJob; owned by that Pod, so Kubernetes deletes it with the run. Read (`get`)
//! until it is over; deleted by the run when done, and by the next run when a run died
//! first.
//!
//! The Job's pods come from the Pod's spec less what Kubernetes adds to a pod (node,
//! the ServiceAccount token volume, priority) and less other containers (sidecars are
//! injected again by their own webhooks), so that the API server takes the template.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::{Client, ResourceExt};

use super::{ClusterError, Permission, api_err, is_status, post_params};
use crate::config::ShardSettings;

/// Marks a copy Job and its pods, with the LEASE_NAME of the runs that make them: a
/// run (which holds that Lease) removes any such Job it did not make.
pub const LABEL_COPY_OF: &str = "pachyderm-backup/copy-of-lease";
const COMPONENT: &str = "app.kubernetes.io/component";
/// Tries of each index: a pod lost (node drained, evicted, OOM-killed) is retried.
pub const RETRIES_PER_INDEX: i32 = 2;
/// Labels and annotations Kubernetes writes on a Job's pods: a template carrying the
/// run's own (of the CronJob's Job) would not match the new Job's selector.
const JOB_LABELS: &[&str] = &[
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
    "pod-template-hash",
];
/// The volume the ServiceAccount admission adds to every pod (`kube-api-access-xxxxx`):
/// added again to the Job's pods, so copied it would be mounted twice.
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
const CONTAINER: &str = "pachyderm-backup";

/// The Job's name for backup `id`: lower case (a backup id has `T` and `Z`), within
/// the 63 characters of a label value (the pods carry it).
pub fn job_name(backup_id: &str) -> String {
    let mut name = format!("pachyderm-backup-copy-{}", backup_id.to_ascii_lowercase());
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// The calls the sharded pre-copy makes, in the run's own namespace.
pub fn permissions(s: &ShardSettings) -> Vec<Permission> {
    let p = |verb, group, resource, name: Option<&str>| Permission { verb, group, resource, name: name.map(str::to_string) };
    vec![
        p("get", "", "pods", Some(&s.pod)),
        p("create", "batch", "jobs", None),
        p("get", "batch", "jobs", None),
        p("list", "batch", "jobs", None),
        p("delete", "batch", "jobs", None),
    ]
}

/// How much longer than PRECOPY_TIMEOUT the Job's own `activeDeadlineSeconds` is: the
/// run's check comes first and names the unfinished shards; the Job's stops its pods
/// should the run be gone (its Pod killed but not yet deleted, so not yet collected).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(60);

/// The Job for `pod`'s run: `args` run in a copy of its container, `settings.count`
/// indexes, `settings.parallelism` at a time, each retried, bounded by `deadline`.
pub fn job(pod: &Pod, name: &str, lease: &str, args: Vec<String>, settings: &ShardSettings, deadline: Option<Duration>) -> Result<Job, ClusterError> {
    let bad = |what: &str| ClusterError::Captured(format!("this pod ({}) cannot be the copy Job's template: {what}", pod.name_any()));
    let uid = pod.metadata.uid.clone().ok_or_else(|| bad("it has no uid"))?;
    let spec = pod.spec.clone().ok_or_else(|| bad("it has no spec"))?;
    let mut containers = spec.containers.clone();
    let at = containers.iter().position(|c| c.name == CONTAINER).unwrap_or(0);
    if containers.is_empty() {
        return Err(bad("it has no container"));
    }
    let mut container = containers.swap_remove(at);
    container.args = Some(args);
    let mounts: Vec<_> = container.volume_mounts.take().unwrap_or_default().into_iter().filter(|m| !m.name.starts_with(TOKEN_VOLUME_PREFIX)).collect();
    let volumes = spec.volumes.clone().map(|v| v.into_iter().filter(|v| mounts.iter().any(|m| m.name == v.name)).collect::<Vec<_>>());
    container.volume_mounts = (!mounts.is_empty()).then_some(mounts);
    let template_spec = PodSpec {
        containers: vec![container],
        init_containers: None,
        ephemeral_containers: None,
        volumes: volumes.filter(|v| !v.is_empty()),
        restart_policy: Some("Never".into()),
        node_name: None,
        // Admission sets them from priorityClassName, and refuses a pod whose values
        // differ from the class's.
        priority: None,
        preemption_policy: None,
        hostname: None,
        subdomain: None,
        ..spec
    };
    let mut labels: BTreeMap<String, String> = pod.labels().clone();
    labels.retain(|k, _| !JOB_LABELS.contains(&k.as_str()));
    labels.insert(COMPONENT.into(), "copy-shard".into());
    labels.insert(LABEL_COPY_OF.into(), lease.into());
    let mut annotations: BTreeMap<String, String> = pod.annotations().clone();
    annotations.retain(|k, _| !JOB_LABELS.contains(&k.as_str()) && !k.starts_with("kubectl.kubernetes.io/"));
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid,
        // blockOwnerDeletion would need `update` on the Pod's finalizers.
        block_owner_deletion: None,
        controller: None,
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(settings.count as i32),
            parallelism: Some(settings.parallelism as i32),
            // Kubernetes 1.29+: each index has its own tries, and one index out of tries
            // fails the Job at once. An older server drops both fields; the Job-wide
            // limit below then allows as many failures in all.
            backoff_limit_per_index: Some(RETRIES_PER_INDEX),
            max_failed_indexes: Some(0),
            backoff_limit: Some(RETRIES_PER_INDEX * settings.count as i32),
            active_deadline_seconds: deadline.map(|d| d.as_secs().max(1) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), annotations: (!annotations.is_empty()).then_some(annotations), ..Default::default() }),
                spec: Some(template_spec),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub completed: Vec<u32>,
    /// Indexes out of tries (Kubernetes 1.29+ reports them).
    pub failed: Vec<u32>,
    pub active: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Complete,
    /// `reason`: the condition's (BackoffLimitExceeded, FailedIndexes, DeadlineExceeded…).
    Failed {
        reason: String,
        message: String,
    },
}

/// A Job's state from its status. `FailureTarget` (1.31+, set before the pods are
/// gone) counts as failed: nothing more will complete.
pub fn state(job: &Job) -> Result<JobState, String> {
    let status = job.status.clone().unwrap_or_default();
    let completed = crate::shards::parse_indexes(status.completed_indexes.as_deref().unwrap_or(""))?;
    let failed = crate::shards::parse_indexes(status.failed_indexes.as_deref().unwrap_or(""))?;
    let conditions = status.conditions.unwrap_or_default();
    let holds = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    let outcome = if let Some(c) = holds("Failed").or_else(|| holds("FailureTarget")) {
        Outcome::Failed { reason: c.reason.clone().unwrap_or_else(|| "Failed".into()), message: c.message.clone().unwrap_or_default() }
    } else if holds("Complete").is_some() {
        Outcome::Complete
    } else {
        Outcome::Running
    };
    Ok(JobState { completed, failed, active: status.active.unwrap_or(0).max(0) as u32, outcome })
}

/// The run's handle on its namespace's Jobs.
pub struct CopyJobs {
    client: Client,
    settings: ShardSettings,
}

impl CopyJobs {
    pub async fn connect(settings: &ShardSettings) -> Result<Self, ClusterError> {
        Ok(CopyJobs { client: super::client().await?, settings: settings.clone() })
    }

    pub fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    /// COPY_SHARDS.
    pub fn count(&self) -> u32 {
        self.settings.count
    }

    pub async fn check_permissions(&self) -> Result<(), ClusterError> {
        super::check_in(&self.client, &self.settings.namespace, permissions(&self.settings)).await
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The run's own Pod: the Job's template and owner.
    pub async fn own_pod(&self) -> Result<Pod, ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        pods.get(&self.settings.pod).await.map_err(api_err(format!("reading this run's own Pod {} (POD_NAME)", self.settings.pod)))
    }

    /// Deletes the copy Jobs of runs of this Lease other than `keep`: a run that died
    /// (killed, its node lost) before deleting its own. Returns their names.
    pub async fn remove_leftovers(&self, lease: &str, keep: &str) -> Result<Vec<String>, ClusterError> {
        let listed = self
            .jobs()
            .list(&ListParams::default().labels(&format!("{LABEL_COPY_OF}={lease}")))
            .await
            .map_err(api_err("listing copy Jobs left by earlier runs"))?;
        let mut removed = Vec::new();
        for job in listed.items {
            let name = job.name_any();
            if name != keep {
                self.delete(&name).await?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    pub async fn create(&self, job: &Job) -> Result<(), ClusterError> {
        let name = job.name_any();
        self.jobs().create(&post_params(), job).await.map_err(api_err(format!("creating the copy Job {name}")))?;
        Ok(())
    }

    pub async fn state(&self, name: &str) -> Result<JobState, ClusterError> {
        let job = self.jobs().get(name).await.map_err(api_err(format!("reading the copy Job {name}")))?;
        state(&job).map_err(|e| ClusterError::Captured(format!("the copy Job {name} has a status this program cannot read: {e}")))
    }

    /// Deletes a Job and its pods (a running pod is stopped); one already gone is fine.
    pub async fn delete(&self, name: &str) -> Result<(), ClusterError> {
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match self.jobs().delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err(format!("deleting the copy Job {name}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use serde_json::json;

    fn settings() -> ShardSettings {
        ShardSettings { count: 4, parallelism: 2, pod: "backup-abcde".into(), namespace: "backups".into() }
    }

    fn own_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "backup-abcde", "namespace": "backups", "uid": "u-1",
                "labels": {"app.kubernetes.io/name": "pachyderm-backup", "app.kubernetes.io/component": "backup",
                           "controller-uid": "c-1", "batch.kubernetes.io/controller-uid": "c-1", "job-name": "nightly-1", "batch.kubernetes.io/job-name": "nightly-1"},
                "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "kubectl.kubernetes.io/restartedAt": "x"}},
            "spec": {
                "serviceAccountName": "pachyderm-backup", "nodeName": "node-1", "priority": 1000, "priorityClassName": "high", "preemptionPolicy": "PreemptLowerPriority",
                "restartPolicy": "Never", "securityContext": {"runAsNonRoot": true, "fsGroup": 65532},
                "initContainers": [{"name": "istio-init", "image": "istio"}],
                "containers": [
                    {"name": "istio-proxy", "image": "istio", "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio"}]},
                    {"name": "pachyderm-backup", "image": "ghcr.io/x/pachyderm-backup:1", "args": ["run"],
                     "env": [{"name": "TARGET_URL", "value": "s3://b"}, {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                     "securityContext": {"readOnlyRootFilesystem": true},
                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "istio-envoy", "emptyDir": {}}, {"name": "kube-api-access-x1", "projected": {"sources": []}}]
            }
        }))
        .expect("a pod")
    }

    #[test]
    fn the_job_is_the_pods_own_container_and_nothing_kubernetes_adds() {
        let args = vec!["copy-shard".to_string(), "--backup".into(), "20261121T020000Z".into()];
        let job = job(&own_pod(), "pachyderm-backup-copy-20261121t020000z", "pachyderm-backup", args.clone(), &settings(), Some(Duration::from_secs(3600)))
            .expect("a job");
        let v = serde_json::to_value(&job).expect("json");
        let spec = &v["spec"];
        assert_eq!((spec["completionMode"].as_str(), spec["completions"].as_i64(), spec["parallelism"].as_i64()), (Some("Indexed"), Some(4), Some(2)));
        assert_eq!((spec["backoffLimitPerIndex"].as_i64(), spec["maxFailedIndexes"].as_i64(), spec["backoffLimit"].as_i64()), (Some(2), Some(0), Some(8)));
        assert_eq!(spec["activeDeadlineSeconds"], json!(3600));
        assert_eq!(v["metadata"]["ownerReferences"], json!([{"apiVersion": "v1", "kind": "Pod", "name": "backup-abcde", "uid": "u-1"}]));
        let pod = &spec["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "the sidecar is injected again by its webhook, not copied");
        assert_eq!(containers[0]["name"], "pachyderm-backup");
        assert_eq!(containers[0]["args"], json!(args));
        assert_eq!(containers[0]["env"][1]["valueFrom"]["secretKeyRef"]["name"], "s", "Secrets by reference, as the run has them");
        assert_eq!(containers[0]["volumeMounts"], json!([{"name": "tmp", "mountPath": "/tmp"}]));
        assert_eq!(pod["volumes"], json!([{"name": "tmp", "emptyDir": {}}]));
        for gone in ["nodeName", "priority", "preemptionPolicy", "initContainers"] {
            assert!(pod.get(gone).is_none(), "{gone} is Kubernetes' to set: {pod}");
        }
        assert_eq!((pod["serviceAccountName"].as_str(), pod["priorityClassName"].as_str()), (Some("pachyderm-backup"), Some("high")));
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels, &v["metadata"]["labels"]);
        assert_eq!(
            labels,
            &json!({"app.kubernetes.io/name": "pachyderm-backup", "app.kubernetes.io/component": "copy-shard", LABEL_COPY_OF: "pachyderm-backup"})
        );
        assert_eq!(spec["template"]["metadata"]["annotations"], json!({"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}));
    }

    #[test]
    fn a_pod_without_uid_or_containers_is_refused() {
        let mut pod = own_pod();
        pod.metadata.uid = None;
        assert!(job(&pod, "j", "l", vec![], &settings(), None).is_err());
        let mut pod = own_pod();
        pod.spec.as_mut().expect("spec").containers.clear();
        assert!(job(&pod, "j", "l", vec![], &settings(), None).is_err());
    }

    #[test]
    fn job_names_are_lower_case_label_values() {
        assert_eq!(job_name("20261121T020000Z-2"), "pachyderm-backup-copy-20261121t020000z-2");
        assert!(job_name(&"X".repeat(80)).len() <= 63);
    }

    #[test]
    fn a_jobs_state_from_its_status() {
        let with = |completed: &str, failed: Option<&str>, conditions: Vec<(&str, &str)>| Job {
            status: Some(JobStatus {
                completed_indexes: Some(completed.into()),
                failed_indexes: failed.map(str::to_string),
                active: Some(1),
                conditions: Some(
                    conditions
                        .into_iter()
                        .map(|(t, r)| JobCondition {
                            type_: t.into(),
                            status: "True".into(),
                            reason: Some(r.into()),
                            message: Some(format!("{r}!")),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = state(&with("0-1", None, vec![])).expect("state");
        assert_eq!((s.completed, s.outcome), (vec![0, 1], Outcome::Running));
        assert_eq!(state(&with("0-3", None, vec![("Complete", "")])).expect("state").outcome, Outcome::Complete);
        let s = state(&with("0,2", Some("1"), vec![("FailureTarget", "FailedIndexes")])).expect("state");
        assert_eq!((s.failed, s.outcome), (vec![1], Outcome::Failed { reason: "FailedIndexes".into(), message: "FailedIndexes!".into() }));
        let s = state(&with("", None, vec![("Failed", "DeadlineExceeded")])).expect("state");
        assert_eq!(s.outcome, Outcome::Failed { reason: "DeadlineExceeded".into(), message: "DeadlineExceeded!".into() });
        assert!(state(&with("x", None, vec![])).is_err());
        assert_eq!(state(&Job::default()).expect("state").outcome, Outcome::Running);
    }
}

//! The capture of the deployment's objects, made while it is paused: what `kubectl
//! apply` can re-create in another cluster (never Secrets), the original replicas of
//! every workload for the manifest, and, when asked, the values of its Helm release.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::catalog::BackupFile;

use super::{ANNOTATION_MODE, ANNOTATION_PAUSED_BY, ANNOTATION_REPLICAS, Cluster, ClusterError, api_err};

impl Cluster {
    /// What `kubectl apply` can re-create in another cluster, as `(file name, JSON)` pairs
    /// for the backup's `cluster/` (never Secrets): pachd and pachw at their original
    /// replicas (the capture runs while they are paused), the Services without the
    /// addresses the old cluster allocated, the ConfigMaps nobody else makes. Not the
    /// pipeline workers (pachd re-creates them) nor objects a controller owns; their
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
    async fn helm_values(&self, release: &str) -> Result<(BackupFile, Vec<u8>), ClusterError> {
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
        Ok((BackupFile::helm_values(release), bytes))
    }
}

/// The cluster objects of a backup and the original replicas of every workload
/// (`kind/name`), pipeline workers included.
#[derive(Debug, Default)]
pub struct Capture {
    pub files: Vec<(BackupFile, Vec<u8>)>,
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
    let bad = |e: serde_json::Error| ClusterError::Captured(format!("cannot rewrite a captured object: {e}"));
    let mut v: Value = serde_json::from_slice(json).map_err(bad)?;
    v["spec"]["replicas"] = json!(replicas);
    serde_json::to_vec_pretty(&v).map_err(bad)
}

/// An object as `kubectl apply` takes it in another cluster: no status, no server-set
/// metadata, none of our annotations, and no address the old cluster allocated (a
/// Service's cluster IPs, outside the new cluster's range, are refused).
fn clean<K: serde::Serialize + ResourceExt>(dir: &str, obj: &K) -> Result<(BackupFile, Vec<u8>), ClusterError> {
    let name = obj.name_any();
    let mut v = serde_json::to_value(obj).map_err(|e| ClusterError::Captured(format!("cannot serialize {dir}/{name}: {e}")))?;
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
    let json = serde_json::to_vec_pretty(&v).map_err(|e| ClusterError::Captured(format!("cannot serialize {dir}/{name}: {e}")))?;
    Ok((BackupFile::cluster_object(dir, &name), json))
}

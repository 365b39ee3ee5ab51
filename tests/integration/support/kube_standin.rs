//! A stand-in Kubernetes API server for what pachyderm-backup uses, spoken to through
//! the real `kube` client via a kubeconfig. It behaves like the real one where it
//! matters to the program: every write bumps a resourceVersion and a stale one gets
//! 409; missing objects 404; SelfSubjectAccessReviews answer `allowed` from a deny
//! list; any status (403, 500…) can be injected on any path; Deployments and ReplicationControllers own pods that
//! a small controller creates and deletes, which take time to terminate (or never do)
//! and to become ready; a changed pod template replaces the pods (rollout restart).
//! Faults (any status on any path) can be injected, and every request is recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::kube_jobs::Jobs;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub user_agent: String,
    pub body: Value,
}

impl Recorded {
    /// Whether the request changes the cluster's objects (SelfSubjectAccessReviews and
    /// Events, which only record, do not).
    pub fn mutating(&self) -> bool {
        self.method != "GET" && !self.path.contains("selfsubjectaccessreviews") && !self.is_event()
    }

    pub fn is_event(&self) -> bool {
        self.path.starts_with("/apis/events.k8s.io/")
    }
}

struct Fault {
    method: Method,
    path_contains: String,
    status: u16,
    remaining: usize,
}

struct Pod {
    owner: String,
    labels: Value,
    template_hash: u64,
    ready_at: Instant,
    deleting_since: Option<Instant>,
}

struct World {
    rv: u64,
    /// collection ("deployments", "replicationcontrollers", "configmaps", "services",
    /// "leases") → name → object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    pods: BTreeMap<String, Pod>,
    pod_seq: u64,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
    denied: Vec<String>,
    terminate_after: Duration,
    ready_after: Duration,
    pods_never_terminate: bool,
    jobs: Jobs,
}

#[derive(Clone)]
pub struct StandIn {
    world: Arc<Mutex<World>>,
    pub addr: SocketAddr,
    pub namespace: String,
    _dir: Arc<tempfile::TempDir>,
    pub kubeconfig: std::path::PathBuf,
}

const COLLECTIONS: [&str; 7] = ["deployments", "replicationcontrollers", "configmaps", "services", "leases", "secrets", "events"];

fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message.into(), "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn matches_selector(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels.get(k).and_then(Value::as_str) == Some(v.trim_start_matches('='))
        } else {
            labels.get(term).is_some()
        }
    })
}

fn hash(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(|v| url_decode(v))
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

impl World {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn pod_json(&self, name: &str, pod: &Pod, namespace: &str) -> Value {
        let now = Instant::now();
        let ready = pod.deleting_since.is_none() && now >= pod.ready_at;
        let mut meta = json!({"name": name, "namespace": namespace, "labels": pod.labels, "resourceVersion": self.rv.to_string()});
        if pod.deleting_since.is_some() {
            meta["deletionTimestamp"] = json!(chrono::Utc::now().to_rfc3339());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "main", "image": "x"}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    /// The controllers: converge pods to each workload's replicas and template, then
    /// write the workloads' status.
    fn reconcile(&mut self) {
        self.jobs.reconcile(&mut self.rv);
        let now = Instant::now();
        if !self.pods_never_terminate {
            let gone: Vec<String> = self
                .pods
                .iter()
                .filter(|(_, p)| p.deleting_since.is_some_and(|t| now.duration_since(t) >= self.terminate_after))
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                self.pods.remove(&n);
            }
        }
        for kind in ["deployments", "replicationcontrollers"] {
            let names: Vec<String> = self.objects[kind].keys().cloned().collect();
            for name in names {
                let obj = self.objects[kind][&name].clone();
                let owner = format!("{kind}/{name}");
                let wanted = obj["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
                let template = obj["spec"]["template"].clone();
                let template_hash = hash(&template);
                let labels = template["metadata"]["labels"].clone();
                // Outdated pods (rollout restart) go first.
                for p in self.pods.values_mut().filter(|p| p.owner == owner && p.deleting_since.is_none() && p.template_hash != template_hash) {
                    p.deleting_since = Some(now);
                }
                let mut live: Vec<String> = self.pods.iter().filter(|(_, p)| p.owner == owner && p.deleting_since.is_none()).map(|(n, _)| n.clone()).collect();
                while live.len() > wanted {
                    if let Some(n) = live.pop() {
                        if let Some(p) = self.pods.get_mut(&n) {
                            p.deleting_since = Some(now);
                        }
                    }
                }
                while live.len() < wanted {
                    self.pod_seq += 1;
                    let pod_name = format!("{name}-{:05}", self.pod_seq);
                    self.pods.insert(
                        pod_name.clone(),
                        Pod { owner: owner.clone(), labels: labels.clone(), template_hash, ready_at: now + self.ready_after, deleting_since: None },
                    );
                    live.push(pod_name);
                }
                let ready = live.iter().filter(|n| self.pods[*n].ready_at <= now).count() as i64;
                let total = self.pods.values().filter(|p| p.owner == owner).count() as i64;
                let generation = obj["metadata"]["generation"].clone();
                let st = self.objects.get_mut(kind).and_then(|c| c.get_mut(&name)).expect("object");
                let new_status = json!({"observedGeneration": generation, "replicas": total, "updatedReplicas": live.len(), "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": (wanted as i64 - ready).max(0)});
                if st["status"] != new_status {
                    st["status"] = new_status;
                }
            }
        }
    }
}

impl StandIn {
    pub async fn start(namespace: &str) -> StandIn {
        let mut objects = BTreeMap::new();
        for c in COLLECTIONS {
            objects.insert(c, BTreeMap::new());
        }
        let world = Arc::new(Mutex::new(World {
            rv: 1000,
            objects,
            pods: BTreeMap::new(),
            pod_seq: 0,
            requests: Vec::new(),
            faults: Vec::new(),
            denied: Vec::new(),
            terminate_after: Duration::from_millis(400),
            ready_after: Duration::from_millis(300),
            pods_never_terminate: false,
            jobs: Jobs::new(std::env::temp_dir()),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in");
        let addr = listener.local_addr().expect("address");
        let app = Router::new().fallback(handle).with_state(world.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ticker = world.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ticker.lock().expect("world").reconcile();
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        world.lock().expect("world").jobs.log_dir = dir.path().to_path_buf();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: {namespace}\ncurrent-context: standin\nusers:\n- name: standin\n  user:\n    token: standin-token\n"
            ),
        )
        .expect("write kubeconfig");
        StandIn { world, addr, namespace: namespace.to_string(), _dir: Arc::new(dir), kubeconfig }
    }

    fn insert(&self, collection: &'static str, name: &str, mut obj: Value) {
        let mut w = self.world.lock().expect("world");
        let rv = w.next_rv();
        obj["metadata"]["name"] = json!(name);
        obj["metadata"]["namespace"] = json!(self.namespace);
        obj["metadata"]["resourceVersion"] = json!(rv);
        obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        obj["metadata"]["generation"] = json!(1);
        w.objects.get_mut(collection).expect("collection").insert(name.to_string(), obj);
        w.reconcile();
    }

    /// A Pachyderm deployment: pachd (1), pachw (optional), `workers` worker RCs,
    /// Services, and the pachd-config ConfigMap.
    pub fn seed_pachyderm(&self, pachw: bool, workers: &[(&str, i64)]) {
        let deployment = |app: &str, replicas: i64, image: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"labels": {"app": app, "suite": "pachyderm"}, "annotations": {}},
                   "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app, "suite": "pachyderm"}},
                            "template": {"metadata": {"labels": {"app": app, "suite": "pachyderm"}}, "spec": {"containers": [{"name": app, "image": image}]}}}})
        };
        self.insert("deployments", "pachd", deployment("pachd", 1, "pachyderm/pachd:2.11.4"));
        if pachw {
            self.insert("deployments", "pachw", deployment("pachw", 2, "pachyderm/pachd:2.11.4"));
        }
        self.insert("deployments", "console", deployment("console", 1, "pachyderm/haberdashery:2.11.4"));
        for (name, replicas) in workers {
            let labels = json!({"app": format!("pipeline-{name}"), "suite": "pachyderm", "component": "worker"});
            self.insert(
                "replicationcontrollers",
                name,
                json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"labels": labels, "annotations": {}},
                       "spec": {"replicas": replicas, "selector": labels, "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "user", "image": "ubuntu"}]}}}}),
            );
        }
        self.insert("services", "pachd", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"labels": {"app": "pachd"}}, "spec": {"clusterIP": "10.96.14.2", "clusterIPs": ["10.96.14.2"], "selector": {"app": "pachd"}, "ports": [{"port": 30650}]}}));
        self.insert("configmaps", "pachd-config", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"annotations": {}}, "data": {"MODE": "full"}}));
        // What a real namespace also holds: the CA bundle the controller-manager puts in
        // every namespace, an address the cluster allocated, a headless Service, and a
        // ConfigMap a controller owns.
        self.insert(
            "configmaps",
            "kube-root-ca.crt",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"}}),
        );
        self.insert(
            "configmaps",
            "console-lock",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "console", "uid": "uid-console"}]}}),
        );
        self.insert(
            "services",
            "pachd-peer",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "pachd"}, "ports": [{"port": 30653}]}}),
        );
    }

    /// A Helm release Secret as Helm 3 writes it: the release JSON, gzipped, base64
    /// encoded, in the Secret's `release` key (itself base64 in the API).
    pub fn seed_helm_release(&self, name: &str, revision: u32, values: Value) {
        use base64::Engine;
        use std::io::Write;
        let release = json!({"name": name, "version": revision, "chart": {"metadata": {"name": "pachyderm", "version": "2.11.4"}}, "config": values});
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(release.to_string().as_bytes()).expect("gzip");
        let inner = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
        let outer = base64::engine::general_purpose::STANDARD.encode(inner);
        self.insert(
            "secrets",
            &format!("sh.helm.release.v1.{name}.v{revision}"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1", "metadata": {"labels": {"owner": "helm", "name": name, "version": revision.to_string(), "status": "deployed"}}, "data": {"release": outer}}),
        );
    }

    /// Waits (bounded) until every workload's pods are ready.
    pub async fn settle(&self) {
        for _ in 0..100 {
            if self.replicas_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the stand-in's workloads never became ready");
    }

    fn replicas_ready(&self) -> bool {
        let w = self.world.lock().expect("world");
        ["deployments", "replicationcontrollers"]
            .iter()
            .all(|k| w.objects[k].values().all(|o| o["status"]["readyReplicas"].as_i64().unwrap_or(0) >= o["spec"]["replicas"].as_i64().unwrap_or(1)))
    }

    pub fn get(&self, collection: &'static str, name: &str) -> Option<Value> {
        self.world.lock().expect("world").objects[collection].get(name).cloned()
    }

    pub fn replicas(&self, collection: &'static str, name: &str) -> Option<i64> {
        self.get(collection, name).and_then(|o| o["spec"]["replicas"].as_i64())
    }

    /// Changes an object as an operator would (kubectl scale, kubectl annotate).
    pub fn operator_patch(&self, collection: &'static str, name: &str, patch: Value) {
        let mut w = self.world.lock().expect("world");
        let rv = w.next_rv();
        let obj = w.objects.get_mut(collection).expect("collection").get_mut(name).expect("object");
        merge(obj, &patch);
        obj["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Every annotation key, on every object, containing `needle`.
    pub fn annotations_containing(&self, needle: &str) -> Vec<String> {
        let w = self.world.lock().expect("world");
        let mut found = Vec::new();
        for (kind, objs) in &w.objects {
            for (name, o) in objs {
                if let Some(a) = o["metadata"]["annotations"].as_object() {
                    found.extend(a.keys().filter(|k| k.contains(needle)).map(|k| format!("{kind}/{name}:{k}")));
                }
            }
        }
        found
    }

    pub fn live_pods(&self, owner_prefix: &str) -> usize {
        self.world.lock().expect("world").pods.values().filter(|p| p.owner.starts_with(owner_prefix)).count()
    }

    /// Every Event recorded (events.k8s.io/v1), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let w = self.world.lock().expect("world");
        let mut events: Vec<Value> = w.objects["events"].values().cloned().collect();
        events.sort_by_key(|e| e["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
        events
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.world.lock().expect("world").requests.clone()
    }

    pub fn mutating_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::mutating).collect()
    }

    /// Answers `status` to the next `times` requests matching.
    pub fn fail(&self, method: Method, path_contains: &str, status: u16, times: usize) {
        self.world.lock().expect("world").faults.push(Fault { method, path_contains: path_contains.into(), status, remaining: times });
    }

    pub fn clear_faults(&self) {
        self.world.lock().expect("world").faults.clear();
    }

    /// SelfSubjectAccessReviews deny `verb resource[/name]`.
    pub fn deny(&self, permission: &str) {
        self.world.lock().expect("world").denied.push(permission.into());
    }

    pub fn pods_never_terminate(&self, never: bool) {
        self.world.lock().expect("world").pods_never_terminate = never;
    }

    /// A Lease held by someone else, renewed `renewed_ago`, valid for `duration`.
    pub fn hold_lease(&self, name: &str, holder: &str, renewed_ago: Duration, duration_seconds: i64) {
        let renew = chrono::Utc::now() - chrono::Duration::from_std(renewed_ago).expect("duration");
        self.insert(
            "leases",
            name,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {},
                   "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_seconds, "renewTime": renew.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "acquireTime": renew.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}}),
        );
    }

    /// The run's own Pod as the chart makes it, its container's environment `env`
    /// (and POD_NAME, POD_NAMESPACE from the downward API): what a copy Job is made
    /// from. Returns its uid.
    pub fn seed_own_pod(&self, name: &str, env: &[(String, String)]) -> String {
        let mut env: Vec<Value> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
        env.push(json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}));
        env.push(json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}));
        let uid = format!("uid-{name}");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": uid, "resourceVersion": "1",
                "labels": {"app.kubernetes.io/name": "pachyderm-backup", "app.kubernetes.io/instance": "nightly", "app.kubernetes.io/component": "backup",
                           "batch.kubernetes.io/controller-uid": "cronjob-run-uid", "controller-uid": "cronjob-run-uid", "batch.kubernetes.io/job-name": "nightly-29012345", "job-name": "nightly-29012345"},
                "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-29012345", "uid": "cronjob-run-uid", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"serviceAccountName": "pachyderm-backup", "nodeName": "node-a", "restartPolicy": "Never", "priority": 0, "enableServiceLinks": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                "containers": [{"name": "pachyderm-backup", "image": "ghcr.io/example/pachyderm-backup:0.1.0", "args": ["run"], "env": env,
                    "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "kube-api-access-7xk2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}, {"name": "kube-api-access-7xk2p", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
            "status": {"phase": "Running"}});
        self.world.lock().expect("world").jobs.pods.insert(name.to_string(), pod);
        uid
    }

    /// The run's own Pod is gone (the CronJob's Job deleted): the garbage collector
    /// deletes what it owns.
    pub fn delete_own_pod(&self, name: &str) {
        self.world.lock().expect("world").jobs.pods.remove(name);
    }

    /// Jobs' pods are not started (Pending) while held.
    pub fn hold_jobs(&self, hold: bool) {
        self.world.lock().expect("world").jobs.hold = hold;
    }

    /// The next `times` pods of index `index` are killed as they start (a node lost).
    pub fn kill_index(&self, index: u32, times: usize) {
        self.world.lock().expect("world").jobs.kill_index(index, times);
    }

    /// Every Job, as stored.
    pub fn jobs(&self) -> Vec<Value> {
        self.world.lock().expect("world").jobs.objects.values().cloned().collect()
    }

    pub fn job_pods_started(&self) -> u64 {
        self.world.lock().expect("world").jobs.pods_started
    }

    /// What every Job pod wrote, for a failing test's message.
    pub fn job_logs(&self) -> String {
        let dir = self.world.lock().expect("world").jobs.log_dir.clone();
        let mut out = String::new();
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
        files.sort();
        for f in files {
            out.push_str(&format!("--- {}\n{}\n", f.display(), std::fs::read_to_string(&f).unwrap_or_default()));
        }
        out
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![("KUBECONFIG".into(), self.kubeconfig.display().to_string()), ("PACHYDERM_NAMESPACE".into(), self.namespace.clone())]
    }
}

async fn handle(State(world): State<Arc<Mutex<World>>>, method: Method, uri: Uri, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let user_agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut w = world.lock().expect("world");
    w.requests.push(Recorded { method: method.to_string(), path: path.clone(), query: query.clone(), user_agent, body: body_json.clone() });
    if let Some(f) = w.faults.iter_mut().find(|f| f.remaining > 0 && f.method == method && path.contains(&f.path_contains)) {
        f.remaining -= 1;
        let code = f.status;
        return status(code, "InjectedFault", format!("injected fault {code} on {method} {path}"));
    }
    w.reconcile();

    if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        let attrs = &body_json["spec"]["resourceAttributes"];
        let verb = attrs["verb"].as_str().unwrap_or("");
        let resource = attrs["resource"].as_str().unwrap_or("");
        let name = attrs["name"].as_str();
        let key = match name {
            Some(n) => format!("{verb} {resource}/{n}"),
            None => format!("{verb} {resource}"),
        };
        let allowed = !w.denied.iter().any(|d| *d == key || *d == format!("{verb} {resource}"));
        let mut answer = body_json.clone();
        answer["status"] = json!({"allowed": allowed});
        return (StatusCode::CREATED, axum::Json(answer)).into_response();
    }

    // /api/v1/namespaces/{ns}/{collection}[/{name}] or /apis/{group}/{version}/namespaces/...
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns_at = parts.iter().position(|p| *p == "namespaces");
    let Some(ns_at) = ns_at else { return status(404, "NotFound", format!("no route {path}")) };
    let namespace = parts.get(ns_at + 1).copied().unwrap_or("").to_string();
    let collection = parts.get(ns_at + 2).copied().unwrap_or("");
    let name = parts.get(ns_at + 3).map(|s| s.to_string());
    let sub = parts.get(ns_at + 4).copied();
    if sub.is_some() {
        return status(404, "NotFound", format!("the stand-in serves no subresource {path}"));
    }

    // A denied permission is refused on the call itself too, as RBAC refuses it.
    let verb = match (&method, &name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "",
    };
    let named = name.as_ref().map(|n| format!("{verb} {collection}/{n}"));
    if w.denied.iter().any(|d| *d == format!("{verb} {collection}") || Some(d) == named.as_ref()) {
        return status(403, "Forbidden", format!("{collection} is forbidden: cannot {verb} resource \"{collection}\" in namespace \"{namespace}\""));
    }
    if collection == "pods" {
        if let Some(n) = &name {
            return match w.jobs.pods.get(n) {
                Some(p) => ok(p.clone()),
                None => status(404, "NotFound", format!("pods \"{n}\" not found")),
            };
        }
        let selector = query_param(&query, "labelSelector").unwrap_or_default();
        let items: Vec<Value> = w.pods.iter().filter(|(_, p)| matches_selector(&p.labels, &selector)).map(|(n, p)| w.pod_json(n, p, &namespace)).collect();
        return ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": w.rv.to_string()}, "items": items}));
    }
    if collection == "jobs" {
        return jobs(&mut w, &method, name, &namespace, &query, &body_json);
    }
    let Some(key) = COLLECTIONS.iter().copied().find(|c| *c == collection) else { return status(404, "NotFound", format!("unknown collection {collection}")) };
    let kind_list = match key {
        "deployments" => "DeploymentList",
        "replicationcontrollers" => "ReplicationControllerList",
        "configmaps" => "ConfigMapList",
        "services" => "ServiceList",
        "secrets" => "SecretList",
        "events" => "EventList",
        _ => "LeaseList",
    };

    match (method.clone(), name) {
        (Method::GET, None) => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = w.objects[key].values().filter(|o| matches_selector(&o["metadata"]["labels"], &selector)).cloned().collect();
            ok(json!({"kind": kind_list, "apiVersion": "v1", "metadata": {"resourceVersion": w.rv.to_string()}, "items": items}))
        }
        (Method::GET, Some(n)) => match w.objects[key].get(&n) {
            Some(o) => ok(o.clone()),
            None => status(404, "NotFound", format!("{key} \"{n}\" not found")),
        },
        (Method::POST, None) => {
            let n = body_json["metadata"]["name"].as_str().unwrap_or("").to_string();
            if w.objects[key].contains_key(&n) {
                return status(409, "AlreadyExists", format!("{key} \"{n}\" already exists"));
            }
            let rv = w.next_rv();
            let mut obj = body_json.clone();
            obj["metadata"]["resourceVersion"] = json!(rv);
            obj["metadata"]["namespace"] = json!(namespace);
            w.objects.get_mut(key).expect("collection").insert(n, obj.clone());
            (StatusCode::CREATED, axum::Json(obj)).into_response()
        }
        (Method::PUT, Some(n)) => {
            let Some(current) = w.objects[key].get(&n).cloned() else { return status(404, "NotFound", format!("{key} \"{n}\" not found")) };
            if body_json["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {key} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let rv = w.next_rv();
            let mut obj = body_json.clone();
            obj["metadata"]["resourceVersion"] = json!(rv);
            w.objects.get_mut(key).expect("collection").insert(n, obj.clone());
            ok(obj)
        }
        (Method::PATCH, Some(n)) => {
            let Some(current) = w.objects[key].get(&n).cloned() else { return status(404, "NotFound", format!("{key} \"{n}\" not found")) };
            if let Some(want) = body_json["metadata"]["resourceVersion"].as_str() {
                if Some(want) != current["metadata"]["resourceVersion"].as_str() {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {key} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
            }
            let mut obj = current.clone();
            let mut patch = body_json.clone();
            if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            merge(&mut obj, &patch);
            if obj["spec"] != current["spec"] {
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                obj["metadata"]["generation"] = json!(g);
            }
            let rv = w.next_rv();
            obj["metadata"]["resourceVersion"] = json!(rv);
            w.objects.get_mut(key).expect("collection").insert(n, obj);
            w.reconcile();
            let fresh = w.objects[key].values().find(|o| o["metadata"]["resourceVersion"] == json!(rv)).cloned().unwrap_or(Value::Null);
            ok(fresh)
        }
        (m, _) => status(405, "MethodNotAllowed", format!("{m} is not served on {path}")),
    }
}

/// batch/v1 Jobs: create, get, list by label, delete (background propagation).
fn jobs(w: &mut World, method: &Method, name: Option<String>, namespace: &str, query: &str, body: &Value) -> Response {
    match (method.clone(), name) {
        (Method::POST, None) => {
            let rv = w.next_rv();
            match w.jobs.create(namespace, body, rv) {
                Ok(job) => (StatusCode::CREATED, axum::Json(job)).into_response(),
                Err((409, m)) => status(409, "AlreadyExists", m),
                Err((code, m)) => status(code, "Invalid", m),
            }
        }
        (Method::GET, Some(n)) => match w.jobs.objects.get(&n) {
            Some(j) => ok(j.clone()),
            None => status(404, "NotFound", format!("jobs.batch \"{n}\" not found")),
        },
        (Method::GET, None) => {
            let selector = query_param(query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = w.jobs.objects.values().filter(|j| matches_selector(&j["metadata"]["labels"], &selector)).cloned().collect();
            ok(json!({"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": w.rv.to_string()}, "items": items}))
        }
        (Method::DELETE, Some(n)) => {
            if w.jobs.delete(&n) {
                ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": n, "group": "batch", "kind": "jobs"}}))
            } else {
                status(404, "NotFound", format!("jobs.batch \"{n}\" not found"))
            }
        }
        (m, _) => status(405, "MethodNotAllowed", format!("{m} is not served on jobs")),
    }
}

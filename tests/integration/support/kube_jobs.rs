//! The stand-in's batch/v1 Jobs: the API server's side (validation as it refuses a bad
//! template, uid, selector, resourceVersion, status; the garbage collector deleting a
//! Job whose owner Pod is gone) and a kubelet for Indexed Jobs: each index runs as a
//! subprocess of the real binary, with the template container's environment and args
//! and `JOB_COMPLETION_INDEX`, `parallelism` at a time; a failed index is retried up
//! to `backoffLimitPerIndex`, and the Job's status (completedIndexes, failedIndexes,
//! conditions) is written as Kubernetes 1.31 writes it. Faults: an index's pods killed
//! (a node lost) a number of times, or no pod started at all (a Job held pending).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

struct Running {
    child: tokio::process::Child,
    pod: String,
}

#[derive(Default)]
struct JobRun {
    failures: BTreeMap<u32, i64>,
    running: BTreeMap<u32, Running>,
    completed: BTreeSet<u32>,
    failed: BTreeSet<u32>,
    pod_failures: i64,
    finished: bool,
    started: Option<Instant>,
}

pub struct Jobs {
    pub objects: BTreeMap<String, Value>,
    runs: BTreeMap<String, JobRun>,
    /// Pods that are not a workload's: the run's own, as the chart makes it.
    pub pods: BTreeMap<String, Value>,
    binary: PathBuf,
    pub log_dir: PathBuf,
    pub hold: bool,
    /// index → how many of its pods are still to be killed.
    kills: BTreeMap<u32, usize>,
    seq: u64,
    /// Pods started for Jobs, in all (deleted Jobs' too).
    pub pods_started: u64,
}

fn invalid(message: String) -> (u16, String) {
    (422, message)
}

impl Jobs {
    pub fn new(log_dir: PathBuf) -> Jobs {
        Jobs {
            objects: BTreeMap::new(),
            runs: BTreeMap::new(),
            pods: BTreeMap::new(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_pachyderm-backup")),
            log_dir,
            hold: false,
            kills: BTreeMap::new(),
            seq: 0,
            pods_started: 0,
        }
    }

    pub fn kill_index(&mut self, index: u32, times: usize) {
        self.kills.insert(index, times);
    }

    /// Validates and stores a Job as the API server does (what it would refuse, it refuses).
    pub fn create(&mut self, namespace: &str, body: &Value, rv: String) -> Result<Value, (u16, String)> {
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() || name.len() > 63 {
            return Err(invalid(format!("Job.batch {name:?} is invalid: metadata.name: must be no more than 63 characters and not empty")));
        }
        if self.objects.contains_key(&name) {
            return Err((409, format!("jobs.batch \"{name}\" already exists")));
        }
        let spec = &body["spec"];
        let template = &spec["template"];
        let pod = &template["spec"];
        if spec["completionMode"] != "Indexed" || spec["completions"].as_i64().unwrap_or(0) < 1 {
            return Err(invalid(format!("Job.batch {name:?} is invalid: this stand-in runs Indexed Jobs with completions only: {spec}")));
        }
        if !matches!(pod["restartPolicy"].as_str(), Some("Never") | Some("OnFailure")) {
            return Err(invalid(format!(
                "Job.batch {name:?} is invalid: spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
            )));
        }
        let labels = &template["metadata"]["labels"];
        for uid_label in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
            if labels.get(uid_label).is_some() {
                return Err(invalid(format!(
                    "Job.batch {name:?} is invalid: spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
                )));
            }
        }
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            return Err(invalid(format!("Job.batch {name:?} is invalid: spec.template.spec.containers: Required value")));
        }
        let volumes: BTreeSet<String> = pod["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
        for c in &containers {
            let mut paths = BTreeSet::new();
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let (vol, path) = (m["name"].as_str().unwrap_or(""), m["mountPath"].as_str().unwrap_or(""));
                if !volumes.contains(vol) {
                    return Err(invalid(format!("Job.batch {name:?} is invalid: volumeMounts[{vol}].name: Not found")));
                }
                if !paths.insert(path.to_string()) {
                    return Err(invalid(format!("Job.batch {name:?} is invalid: volumeMounts.mountPath: Invalid value: {path:?}: must be unique")));
                }
            }
        }
        if pod.get("nodeName").is_some() {
            return Err(invalid(format!("Job.batch {name:?}: a template with nodeName pins every pod to the run's node")));
        }
        for owner in body["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if owner[field].as_str().unwrap_or("").is_empty() {
                    return Err(invalid(format!("Job.batch {name:?} is invalid: metadata.ownerReferences.{field}: Required value")));
                }
            }
        }
        self.seq += 1;
        let uid = format!("job-uid-{}", self.seq);
        let mut job = body.clone();
        job["metadata"]["namespace"] = json!(namespace);
        job["metadata"]["uid"] = json!(uid);
        job["metadata"]["resourceVersion"] = json!(rv);
        job["metadata"]["generation"] = json!(1);
        job["metadata"]["creationTimestamp"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        job["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = json!(uid);
        job["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(name);
        job["status"] = json!({});
        self.objects.insert(name.clone(), job.clone());
        self.runs.insert(name, JobRun::default());
        Ok(job)
    }

    /// Deletes a Job and stops its pods; false when there is no such Job.
    pub fn delete(&mut self, name: &str) -> bool {
        if let Some(mut run) = self.runs.remove(name) {
            for (_, mut r) in std::mem::take(&mut run.running) {
                let _ = r.child.start_kill();
            }
        }
        self.objects.remove(name).is_some()
    }

    /// The controllers: the garbage collector, then each Job's pods and status.
    pub fn reconcile(&mut self, rv: &mut u64) {
        // An owner Pod that is not there (or is another Pod of that name) takes its
        // dependents with it.
        let orphans: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, j)| {
                j["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| o["kind"] == "Pod" && self.pods.get(o["name"].as_str().unwrap_or("")).is_none_or(|p| p["metadata"]["uid"] != o["uid"]))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in orphans {
            self.delete(&name);
        }
        let names: Vec<String> = self.objects.keys().cloned().collect();
        for name in names {
            let job = self.objects[&name].clone();
            let Some(run) = self.runs.get_mut(&name) else { continue };
            if run.finished {
                continue;
            }
            let spec = &job["spec"];
            let completions = spec["completions"].as_i64().unwrap_or(1) as u32;
            let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0) as usize;
            let per_index = spec["backoffLimitPerIndex"].as_i64();
            let max_failed = spec["maxFailedIndexes"].as_i64();
            let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
            let started = *run.started.get_or_insert_with(Instant::now);

            // Pods that ended.
            let ended: Vec<(u32, bool)> = run
                .running
                .iter_mut()
                .filter_map(|(i, r)| match r.child.try_wait() {
                    Ok(Some(status)) => Some((*i, status.success())),
                    Ok(None) => None,
                    Err(_) => Some((*i, false)),
                })
                .collect();
            for (i, ok) in ended {
                run.running.remove(&i);
                if ok {
                    run.completed.insert(i);
                } else {
                    run.pod_failures += 1;
                    let f = run.failures.entry(i).or_default();
                    *f += 1;
                    if per_index.is_some_and(|limit| *f > limit) {
                        run.failed.insert(i);
                    }
                }
            }

            let mut failure: Option<(&str, String)> = None;
            if max_failed.is_some_and(|m| run.failed.len() as i64 > m) {
                failure = Some(("MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes".into()));
            } else if per_index.is_none() && run.pod_failures > backoff_limit {
                failure = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
            } else if spec["activeDeadlineSeconds"].as_i64().is_some_and(|d| started.elapsed().as_secs_f64() > d as f64) {
                failure = Some(("DeadlineExceeded", "Job was active longer than specified deadline".into()));
            } else if run.completed.len() + run.failed.len() == completions as usize && !run.failed.is_empty() {
                failure = Some(("FailedIndexes", "Job has failed indexes".into()));
            }

            // Pods to start: the lowest indexes neither done, failed out nor running.
            if failure.is_none() && !self.hold {
                let pending: Vec<u32> =
                    (0..completions).filter(|i| !run.completed.contains(i) && !run.failed.contains(i) && !run.running.contains_key(i)).collect();
                for i in pending.into_iter().take(parallelism.saturating_sub(run.running.len())) {
                    self.seq += 1;
                    let pod = format!("{name}-{i}-{:05x}", self.seq);
                    let container = &spec["template"]["spec"]["containers"][0];
                    let mut cmd = tokio::process::Command::new(&self.binary);
                    cmd.args(container["args"].as_array().into_iter().flatten().filter_map(Value::as_str));
                    cmd.env_clear();
                    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
                    cmd.env("HOSTNAME", &pod);
                    for e in container["env"].as_array().into_iter().flatten() {
                        let key = e["name"].as_str().unwrap_or("");
                        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                            (Value::String(v), _) => Some(v.clone()),
                            (_, Some("metadata.name")) => Some(pod.clone()),
                            (_, Some("metadata.namespace")) => job["metadata"]["namespace"].as_str().map(str::to_string),
                            _ => None,
                        };
                        if let Some(v) = value {
                            cmd.env(key, v);
                        }
                    }
                    cmd.env("JOB_COMPLETION_INDEX", i.to_string());
                    let log = std::fs::File::create(self.log_dir.join(format!("{pod}.log"))).expect("a pod log");
                    cmd.stdout(log.try_clone().expect("log")).stderr(log).kill_on_drop(true);
                    let mut child = cmd.spawn().expect("start the binary as a Job's pod");
                    self.pods_started += 1;
                    if let Some(left) = self.kills.get_mut(&i).filter(|n| **n > 0) {
                        *left -= 1;
                        let _ = child.start_kill();
                    }
                    run.running.insert(i, Running { child, pod });
                }
            }

            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let fmt = |set: &BTreeSet<u32>| format_indexes(&set.iter().copied().collect::<Vec<_>>());
            let mut status = json!({
                "startTime": job["status"]["startTime"].as_str().map(str::to_string).unwrap_or_else(|| now.clone()),
                "active": run.running.len(),
                "ready": run.running.len(),
                "succeeded": run.completed.len(),
                "failed": run.pod_failures,
                "terminating": 0,
                "completedIndexes": fmt(&run.completed),
                "uncountedTerminatedPods": {},
            });
            if per_index.is_some() {
                status["failedIndexes"] = json!(fmt(&run.failed));
            }
            if let Some((reason, message)) = failure {
                for (_, mut r) in std::mem::take(&mut run.running) {
                    let _ = r.child.start_kill();
                }
                status["active"] = json!(0);
                status["ready"] = json!(0);
                status["conditions"] = json!([
                    {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now},
                    {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now},
                ]);
                run.finished = true;
            } else if run.completed.len() == completions as usize {
                status["conditions"] = json!([
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastTransitionTime": now},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastTransitionTime": now},
                ]);
                status["completionTime"] = json!(now);
                run.finished = true;
            }
            let obj = self.objects.get_mut(&name).expect("the job");
            if obj["status"] != status {
                *rv += 1;
                obj["status"] = status;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            }
        }
    }
}

/// Indexes as Kubernetes writes them: `0,2-4`. Written here again rather than taken
/// from the program: the stand-in speaks Kubernetes' format on its own, so a wrong
/// format in the program cannot agree with itself.
fn format_indexes(v: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if v[i] == start { start.to_string() } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    parts.join(",")
}

//! Bad input gets a clear error, exit 2, and touches nothing: not a single request
//! reaches the Kubernetes stand-in.

mod support;

use support::kube_standin::StandIn;
use support::*;

fn good(kube: &StandIn, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PGHOST".into(), "127.0.0.1".into()),
        ("SOURCE_URL".into(), format!("file://{}", dir.display())),
        ("TARGET_URL".into(), "s3://backups/nightly".into()),
        ("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "wJalrXUtnFEMI-secret".into()),
    ];
    env.extend(kube.env());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_exit_2_name_the_variable_and_touch_nothing() {
    let kube = StandIn::start("pachyderm").await;
    kube.seed_pachyderm(true, &[("default-edges-v1", 1)]);
    let dir = tempfile::tempdir().expect("dir");
    let cases: &[(&[(&str, &str)], &str, &str)] = &[
        (&[("SOURCE_URL", "<unset>")], "SOURCE_URL", "is not set"),
        (&[("TARGET_URL", "<unset>")], "TARGET_URL", "is not set"),
        (&[("TARGET_URL", "ftp://host/backups")], "TARGET_URL", "not supported"),
        (&[("TARGET_URL", "backups")], "TARGET_URL", "not a URL"),
        (&[("SOURCE_URL", "gs://pach-data")], "SOURCE_URL", "no credentials"),
        (&[("TARGET_URL", "az://backups")], "TARGET_URL", "no storage account"),
        (&[("AWS_SECRET_ACCESS_KEY", "<unset>")], "TARGET_URL", "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        (&[("PGHOST", "<unset>")], "PGHOST", "is not set"),
        (&[("PGPORT", "postgres")], "PGPORT", "not a whole number"),
        (&[("PGSSLMODE", "always")], "PGSSLMODE", "not an sslmode"),
        (&[("PAUSE_MODE", "freeze")], "PAUSE_MODE", "one of scale, pachyderm, none"),
        (&[("PAUSE_TIMEOUT", "5 minutes please")], "PAUSE_TIMEOUT", "not a duration"),
        (&[("MAX_DOWNTIME", "0s")], "MAX_DOWNTIME", "zero"),
        (&[("RESUME_TIMEOUT", "-10m")], "RESUME_TIMEOUT", "not a duration"),
        (&[("WORKER_SELECTOR", "suite=pachyderm,component=work er")], "WORKER_SELECTOR", "invalid value"),
        (&[("PACHD_DEPLOYMENT", "PachD")], "PACHD_DEPLOYMENT", "not a Kubernetes object name"),
        (&[("COPY_CONCURRENCY", "lots")], "COPY_CONCURRENCY", "not a whole number"),
        (&[("COPY_CONCURRENCY", "100000")], "COPY_CONCURRENCY", "out of range"),
        (&[("KEEP_DAILY", "seven")], "KEEP_DAILY", "not a whole number"),
        (&[("KEEP_WITHIN", "a while")], "KEEP_WITHIN", "not a duration"),
        (&[("OBJECTS", "some")], "OBJECTS", "one of copy, skip"),
        (&[("SCHEDULE", "0 2 * *")], "SCHEDULE", "not a cron expression"),
        (&[("PUSHGATEWAY_URL", "pushgateway:9091")], "PUSHGATEWAY_URL", "http(s) URL"),
        (&[("DATABASES", "pachyderm;drop")], "DATABASES", "not a list of database names"),
        (&[("LEASE_DURATION", "soon")], "LEASE_DURATION", "not a duration"),
        (&[("PG_BIN_DIR", "/nonexistent/bin")], "PG_BIN_DIR", "not a directory"),
    ];
    assert!(cases.len() >= 15);
    for (overrides, variable, fragment) in cases {
        let mut env = good(&kube, dir.path());
        for (k, v) in overrides.iter() {
            env.retain(|(key, _)| key != k);
            if *v != "<unset>" {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let before = kube.requests().len();
        let out = run_to_end(binary(&["run"], &env)).await;
        assert_eq!(out.code, Some(2), "{overrides:?} should exit 2:\n{}", out.stderr);
        let line = out.stderr.lines().find(|l| l.contains(variable) && l.contains(fragment));
        assert!(line.is_some(), "{overrides:?}: no line names {variable} with {fragment:?}:\n{}", out.stderr);
        assert_eq!(kube.requests().len(), before, "{overrides:?} sent requests to the cluster");
    }
    assert!(kube.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_problems_are_reported_together_and_secrets_never_printed() {
    let kube = StandIn::start("pachyderm").await;
    let dir = tempfile::tempdir().expect("dir");
    let mut env = good(&kube, dir.path());
    env.extend([
        ("PAUSE_MODE".into(), "freeze".into()),
        ("MAX_DOWNTIME".into(), "forever".into()),
        ("PGPASSWORD".into(), "pg-very-secret".into()),
        ("KEEP_LAST".into(), "x".into()),
    ]);
    let out = run_to_end(binary(&["run"], &env)).await;
    assert_eq!(out.code, Some(2));
    for v in ["PAUSE_MODE", "MAX_DOWNTIME", "KEEP_LAST"] {
        assert!(out.stderr.contains(v), "{v} not reported:\n{}", out.stderr);
    }
    for secret in ["pg-very-secret", "wJalrXUtnFEMI-secret"] {
        assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret), "{secret} printed");
    }
}

#[test]
fn variables_lists_every_variable_and_the_readme_documents_them() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pachyderm-backup")).args(["variables", "--json"]).output().expect("run");
    assert!(out.status.success());
    let vars: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    for v in &vars {
        let name = v["name"].as_str().expect("name");
        assert!(readme.contains(&format!("`{name}`")), "README.md does not document {name}");
    }
}

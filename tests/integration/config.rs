//! Bad input gets a clear error, exit 2, and touches nothing: not a single request
//! reaches the Kubernetes stand-in.

use crate::support::kube_standin::StandIn;
use crate::support::*;

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
        (&[("COPY_SHARDS", "0")], "COPY_SHARDS", "out of range"),
        (&[("COPY_SHARDS", "300")], "COPY_SHARDS", "out of range"),
        (&[("COPY_SHARDS", "4"), ("POD_NAMESPACE", "backup")], "POD_NAME", "is unset, and COPY_SHARDS is 4"),
        (&[("COPY_SHARDS", "4"), ("PRECOPY", "false"), ("POD_NAME", "b-1"), ("POD_NAMESPACE", "backup")], "COPY_SHARDS", "leaves no pre-copy"),
        (&[("COPY_PARALLELISM", "0")], "COPY_PARALLELISM", "out of range"),
        (&[("PRECOPY_TIMEOUT", "soon")], "PRECOPY_TIMEOUT", "not a duration"),
        (&[("KEEP_DAILY", "seven")], "KEEP_DAILY", "not a whole number"),
        (&[("KEEP_WITHIN", "a while")], "KEEP_WITHIN", "not a duration"),
        (&[("OBJECTS", "some")], "OBJECTS", "one of copy, skip"),
        (&[("SCHEDULE", "0 2 * *")], "SCHEDULE", "not a cron expression"),
        // Kubernetes counts the days of the week 0-6 from Sunday and refuses 7.
        (&[("SCHEDULE", "0 2 * * 7")], "SCHEDULE", "\"0 2 * * 7\" is not a cron expression Kubernetes accepts (day of week field: end of range (7)"),
        (&[("SCHEDULE_TIMEZONE", "Europe/Pariss")], "SCHEDULE_TIMEZONE", "unknown time zone Europe/Pariss"),
        (&[("PUSHGATEWAY_URL", "pushgateway:9091")], "PUSHGATEWAY_URL", "http(s) URL"),
        (&[("DATABASES", "pachyderm;drop")], "DATABASES", "not a list of database names"),
        (&[("LEASE_DURATION", "soon")], "LEASE_DURATION", "not a duration"),
        (&[("PG_BIN_DIR", "/nonexistent/bin")], "PG_BIN_DIR", "not a directory"),
        (&[("DUMP_COMPRESSION", "brotli")], "DUMP_COMPRESSION", "\"brotli\" is not a compression"),
        (&[("DUMP_COMPRESSION", "zstd:30")], "DUMP_COMPRESSION", "level \"30\" of zstd is not 1-22"),
        // These three exited 101 (a panic inside object_store's signer) at the first request.
        (&[("TARGET_AWS_ENDPOINT", "http://exa mple:9000")], "TARGET_AWS_ENDPOINT", "not a URL"),
        (&[("AWS_ENDPOINT", "http://host^:9000")], "AWS_ENDPOINT", "not a URL"),
        (&[("AWS_SESSION_TOKEN", "token-from-a-secret-file\n")], "AWS_SESSION_TOKEN", "control character"),
        (&[("AWS_ALLOW_HTTP", "yes please")], "AWS_ALLOW_HTTP", "not a boolean"),
        (&[("TARGET_AWS_TIMEOUT", "5 parsecs")], "TARGET_AWS_TIMEOUT", "not a duration"),
        (&[("TARGET_URL", "s3://backups/nightly/"), ("SOURCE_URL", "s3://backups//nightly")], "TARGET_URL", "same as SOURCE_URL"),
        (&[("TARGET_URL", "s3a://pach-data/backups"), ("SOURCE_URL", "s3://pach-data")], "TARGET_URL", "inside SOURCE_URL"),
        (&[("GC_GRACE", "1h")], "GC_GRACE", "below its floor of 3h 15m"),
        (&[("PREFLIGHT_TIMEOUT", "a minute")], "PREFLIGHT_TIMEOUT", "not a duration"),
        // libpq's files are checked before anything starts (libpq itself goes on
        // silently without a client certificate it cannot find).
        (&[("PGSSLCERT", "/nonexistent/tls.crt")], "PGSSLCERT", "cannot be read"),
        (&[("PGSSLKEY", "/nonexistent/tls.key")], "PGSSLKEY", "cannot be read"),
        (&[("PGSSLCRL", "/nonexistent/crl.pem")], "PGSSLCRL", "cannot be read"),
        (&[("PGCONNECT_TIMEOUT", "soon")], "PGCONNECT_TIMEOUT", "whole number of seconds"),
        (&[("TARGET_AWS_CA_BUNDLE", "/nonexistent/ca.pem")], "TARGET_AWS_CA_BUNDLE", "cannot be read"),
        (&[("AWS_CA_BUNDLE", "/etc/hostname")], "AWS_CA_BUNDLE", "holds no PEM certificate"),
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
        let said = out.said();
        let line = said.iter().find(|l| l.contains(variable) && l.contains(fragment));
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

/// A name no library reads (an object_store key object_store does not know, a libpq
/// variable libpq does not know, say a misspelt one) is not dropped silently: every one
/// is logged as a warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_no_library_reads_are_warned_about() {
    let kube = StandIn::start("pachyderm").await;
    let dir = tempfile::tempdir().expect("dir");
    let mut env = good(&kube, dir.path());
    for (k, v) in [
        ("TARGET_AWS_PROFILE", "prod"),
        ("AWS_CONFIG_FILE", "/etc/aws/config"),
        ("PGSSLCRT", "/tls/tls.crt"),
        ("PGDATABASE", "other"),
        ("PAUSE_MODE", "freeze"),
    ] {
        env.push((k.into(), v.into()));
    }
    let out = run_to_end(binary(&["run"], &env)).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for (name, says) in [
        ("TARGET_AWS_PROFILE", "is not an object_store option: it is ignored"),
        ("AWS_CONFIG_FILE", "is not an object_store option: it is ignored"),
        ("PGSSLCRT", "is not a libpq variable: it is ignored"),
        ("PGDATABASE", "has no effect"),
    ] {
        assert!(out.stderr.lines().any(|l| l.contains("WARN") && l.contains(&format!("{name} {says}"))), "no warning about {name}:\n{}", out.stderr);
    }
}

/// Schedules a CronJob runs pass the configuration check: the run goes on to its
/// preflight (here the database, down: exit 1, nothing touched). Before SCHEDULE was
/// read as Kubernetes reads it, "0 2 * * 0" (Sunday) stopped every run with exit 2.
/// A configuration that passes the check and stops at the database preflight (a closed
/// port), touching nothing: local buckets of their own (`i`), no cluster.
fn preflight_only(dir: &std::path::Path, closed_port: u16, i: usize) -> Vec<(String, String)> {
    vec![
        ("PAUSE_MODE".into(), "none".into()),
        ("PGHOST".into(), "127.0.0.1".into()),
        ("PGPORT".into(), closed_port.to_string()),
        ("PGSSLMODE".into(), "disable".into()),
        ("SOURCE_URL".into(), format!("file://{}/source", dir.display())),
        ("TARGET_URL".into(), format!("file://{}/target-{i}", dir.display())),
        ("LOG_FORMAT".into(), "text".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_schedules_pass_the_configuration_check() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("source")).expect("source dir");
    let closed_port = pachyderm_backup::demo::free_port();
    let cases: &[&[(&str, &str)]] = &[
        &[("SCHEDULE", "0 2 * * 0")],
        &[("SCHEDULE", "0 2 * * SUN")],
        &[("SCHEDULE", "0 2 * * 1-5"), ("SCHEDULE_TIMEZONE", "Europe/Paris")],
        &[("SCHEDULE", "@daily"), ("SCHEDULE_TIMEZONE", "America/New_York")],
        &[("SCHEDULE", "0 2 1 * 1")],
    ];
    for (i, overrides) in cases.iter().enumerate() {
        let mut env: Vec<(String, String)> = preflight_only(dir.path(), closed_port, i);
        env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let out = run_to_end(binary(&["run"], &env)).await;
        assert_eq!(out.code, Some(1), "{overrides:?} must pass the configuration check:\n{}", out.stderr);
        assert!(out.stderr.contains("the cluster is untouched"), "{overrides:?}:\n{}", out.stderr);
        assert!(!out.stderr.contains("SCHEDULE"), "{overrides:?} reported:\n{}", out.stderr);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_overlapping_the_source_is_refused_however_spelled() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("source/backups")).expect("mkdir");
    std::fs::create_dir_all(root.join("elsewhere")).expect("mkdir");
    std::os::unix::fs::symlink(root.join("source/backups"), root.join("link-into-source")).expect("symlink");
    let source = format!("file://{}/source", root.display());
    let cases = [
        (format!("{source}/"), "is the same as SOURCE_URL"),
        (format!("file://{}//source/./", root.display()), "is the same as SOURCE_URL"),
        (format!("{source}/backups"), "is inside SOURCE_URL"),
        (format!("file://{}/elsewhere/../source/new", root.display()), "is inside SOURCE_URL"),
        (format!("file://{}/link-into-source", root.display()), "is inside SOURCE_URL"),
        (format!("file://{}/link-into-source/nightly", root.display()), "is inside SOURCE_URL"),
        (format!("file://{}", root.display()), "contains SOURCE_URL"),
    ];
    for (target, fragment) in &cases {
        let env: Vec<(String, String)> = vec![
            ("PAUSE_MODE".into(), "none".into()),
            ("PGHOST".into(), "127.0.0.1".into()),
            ("SOURCE_URL".into(), source.clone()),
            ("TARGET_URL".into(), target.clone()),
        ];
        let out = run_to_end(binary(&["run"], &env)).await;
        assert_eq!(out.code, Some(2), "TARGET_URL={target} should exit 2:\n{}", out.stderr);
        let line = out.stderr.lines().find(|l| l.contains("TARGET_URL") && l.contains(fragment));
        assert!(line.is_some_and(|l| l.contains("a bucket or prefix outside SOURCE_URL, and SOURCE_URL outside it")), "TARGET_URL={target}:\n{}", out.stderr);
    }
    assert!(std::fs::read_dir(root.join("source/backups")).expect("dir").next().is_none(), "nothing was written into the source");
    // Restoring into the backup bucket.
    let env: Vec<(String, String)> = vec![
        ("TARGET_URL".into(), format!("file://{}/elsewhere", root.display())),
        ("RESTORE_URL".into(), format!("file://{}/elsewhere/restored", root.display())),
        ("RESTORE_PGHOST".into(), "127.0.0.1".into()),
    ];
    let out = run_to_end(binary(&["restore"], &env)).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.lines().any(|l| l.contains("RESTORE_URL") && l.contains("inside TARGET_URL")), "{}", out.stderr);
}

/// Junk that a typo, a copy-paste or a Secret file can put in a variable.
fn garbage() -> Vec<String> {
    let mut values: Vec<String> = [
        " ",
        "^",
        "http://exa mple:9000",
        "http://host^:9000",
        "not a url",
        "-1",
        "99999999999999999999",
        "5000000000y",
        "yes please",
        "%zz",
        "value-from-a-secret-file\n",
        "\u{e9}t\u{e9}",
        "http://h\u{e4}st:9000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    values.push("x".repeat(5 * 1024));
    values
}

/// A stand-in S3 endpoint that refuses every request at once (403, not retried): the
/// run's first bucket request fails cleanly, after object_store has built and signed it.
async fn refusing_endpoint() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), socket.read(&mut buf)).await;
                let _ = socket.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    port
}

/// Every variable of `pachyderm-backup variables` (each object_store family by every key
/// name object_store knows), given garbage one at a time on top of a valid `run`: a clear
/// configuration error naming the variable (exit 2), or, the value being usable, a
/// failure before anything is touched (exit 1: the database is down, or the backup
/// bucket refuses); never a panic (exit 101), never success.
///
/// The plain variables run with file:// buckets (so that the database variables reach
/// the database preflight); the object_store keys with an S3 backup bucket at a local
/// endpoint (so that object_store builds and signs a request with them), one value
/// each: the unit test `accepted_object_store_options_never_panic` builds stores from
/// every key × value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_any_variable_is_an_error_never_a_panic() {
    use futures::StreamExt;
    use pachyderm_backup::config::{VARIABLES, store_key_names};
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("source")).expect("source dir");
    let closed_port = pachyderm_backup::demo::free_port();
    let s3_port = refusing_endpoint().await;
    let values = garbage();
    let keys = store_key_names();
    // (variable, value, with the S3 backup bucket)
    let mut runs: Vec<(String, String, bool)> = Vec::new();
    for v in VARIABLES {
        match v.name.strip_suffix('*') {
            None => runs.extend(values.iter().map(|value| (v.name.to_string(), value.clone(), false))),
            Some(stem) => {
                let (side, family) = ["SOURCE_", "TARGET_", "RESTORE_"].iter().find_map(|s| Some((*s, stem.strip_prefix(s)?))).unwrap_or(("", stem));
                if family == "PG" {
                    // libpq's variables, with file:// buckets: they reach the database preflight.
                    for key in pachyderm_backup::config::LIBPQ_VARIABLES {
                        let value = values[runs.len() % values.len()].clone();
                        runs.push((format!("{side}{key}"), value, false));
                    }
                    continue;
                }
                for key in keys.iter().filter(|k| k.starts_with(family)) {
                    let value = values[runs.len() % values.len()].clone();
                    runs.push((format!("{side}{key}"), value, true));
                }
            }
        }
    }
    assert!(runs.len() > 1200, "{} runs", runs.len());
    let started = std::time::Instant::now();
    let base = |i: usize, s3: bool| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = preflight_only(dir.path(), closed_port, i);
        if s3 {
            env.extend([
                ("TARGET_URL".into(), "s3://backups/nightly".into()),
                ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{s3_port}")),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "secret".into()),
            ]);
        }
        env
    };
    let outcomes: Vec<(String, String, crate::support::Output)> = futures::stream::iter(runs.into_iter().enumerate())
        .map(|(i, (variable, value, s3))| {
            let mut env = base(i, s3);
            // The variable under test replaces the base's (the later TARGET_URL too).
            env.retain(|(k, _)| *k != variable);
            let mut seen = std::collections::BTreeSet::new();
            env.reverse();
            env.retain(|(k, _)| seen.insert(k.clone()));
            env.push((variable.clone(), value.clone()));
            async move { (variable, value, run_to_end(binary(&["run"], &env)).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (variable, value, out) in &outcomes {
        *counts.entry(out.code).or_insert(0) += 1;
        let shown = if value.len() > 40 { format!("{}… ({} bytes)", &value[..20], value.len()) } else { format!("{value:?}") };
        let ok = match out.code {
            Some(2) => out.stderr.contains(variable.as_str()),
            Some(1) => out.stderr.contains("the cluster is untouched"),
            _ => false,
        };
        if !ok || out.stderr.contains("panicked") {
            failures.push(format!("{variable}={shown}: exit {:?}\n{}", out.code, out.stderr.lines().take(6).collect::<Vec<_>>().join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        outcomes.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n\n")
    );
    assert!(counts.get(&Some(2)).copied().unwrap_or(0) > 600 && counts.get(&Some(1)).copied().unwrap_or(0) > 300, "{counts:?}");
    eprintln!("{} runs in {:.1}s: {counts:?}", outcomes.len(), started.elapsed().as_secs_f64());
}

/// 10.8: a backup bucket behind a private CA (MinIO and on-premises S3 often are) is
/// reached once its CA is given as TARGET_AWS_CA_BUNDLE (the AWS CLI's AWS_CA_BUNDLE,
/// per side). Without it the run stops at once, before anything is paused, naming the
/// certificate error and the variable to set. Before, AWS_CA_BUNDLE was an unknown key,
/// ignored: no run could reach such a bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_bucket_behind_a_private_ca_is_trusted_through_its_ca_bundle() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    let ca = TestCa::new(&bed.dir.path().join("s3-ca"), "private-s3-ca");
    let (cert, key) = ca.issue("moto-tls", false);
    let tls = Moto::start_tls(&cert, &key).await;
    tls.create_bucket_over_tls("secure-backups", &ca.cert).await;
    bed.set("TARGET_URL", "s3://secure-backups/nightly");
    bed.set("TARGET_AWS_ENDPOINT", &format!("https://127.0.0.1:{}", tls.port));

    // The fail-fast path is the one that names the variable (no timing asserted: the
    // project's tests measure behaviour, benchmarks measure time).
    let out = bed.run(&["run"]).await;
    out.expect_code(1);
    assert!(
        out.stderr.contains("invalid peer certificate") && out.stderr.contains("TARGET_AWS_CA_BUNDLE") && out.stderr.contains("the cluster is untouched"),
        "names the certificate error and the variable:\n{}",
        out.stderr
    );
    bed.assert_never_paused();

    bed.set("TARGET_AWS_CA_BUNDLE", &ca.cert.display().to_string());
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let target: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(object_store::prefix::PrefixStore::new(tls.store_over_tls("secure-backups", &ca.cert), "nightly"));
    let manifests = pachyderm_backup::catalog::Catalog::new(target).complete().await.expect("read the backup bucket over TLS");
    assert_eq!(manifests.len(), 1, "one backup in the bucket behind the private CA");
    assert_eq!(manifests[0].objects.counts.count, 3);
    bed.assert_resumed();
}

/// 10.8: client-certificate authentication (PGSSLCERT, PGSSLKEY, PGSSLROOTCERT,
/// PGSSLMODE=verify-full) reaches the preflight and pg_dump alike, and the restore
/// server's own (RESTORE_PGSSL*) reach the drill's psql and pg_restore, never the
/// backup's. Before, the preflight (sqlx) read PGSSLCERT/PGSSLKEY itself while pg_dump
/// was given neither: the preflight passed, the cluster was paused, pg_dump was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_reach_the_preflight_pg_dump_and_the_drill() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    let ca = TestCa::new(&bed.dir.path().join("pg-ca"), "private-pg-ca");
    require_client_certificates(&bed.pg, &ca, "backup").await;
    let (cert, key) = ca.issue("backup", true);
    let home = bed.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let (ca_cert, cert, key) = (ca.cert.display().to_string(), cert.display().to_string(), key.display().to_string());
    bed.set("HOME", &home.display().to_string()) // no ~/.postgresql/postgresql.key to fall back on
        .set("PGUSER", "backup")
        .set("PGSSLMODE", "verify-full")
        .set("PGSSLROOTCERT", &ca_cert)
        .set("PGSSLCERT", &cert);

    // The certificate without its key: libpq refuses it in the preflight, nothing is paused.
    let out = bed.run(&["run"]).await;
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot connect to database pachyderm") && out.stderr.contains("private key") && out.stderr.contains("PGSSLKEY"),
        "the preflight says why:\n{}",
        out.stderr
    );
    bed.assert_never_paused();
    assert!(bed.manifests().await.is_empty());

    // With it: the preflight and pg_dump both log in with the certificate (pg_hba.conf
    // lets `backup` in no other way).
    bed.set("PGSSLKEY", &key);
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let manifests = bed.manifests().await;
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].databases.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["pachyderm", "dex"]);
    bed.assert_resumed();

    // The drill on the same server as `backup`: the backup's PG* variables never reach
    // the restore server's clients, its own RESTORE_PGSSL* do.
    let restore = |with_certificate: bool| {
        let mut env = vec![
            ("RESTORE_PGHOST", "127.0.0.1".to_string()),
            ("RESTORE_PGPORT", bed.pg.port.to_string()),
            ("RESTORE_PGUSER", "backup".into()),
            ("RESTORE_PGSSLMODE", "verify-full".into()),
            ("RESTORE_PGSSLROOTCERT", ca_cert.clone()),
        ];
        if with_certificate {
            env.extend([("RESTORE_PGSSLCERT", cert.clone()), ("RESTORE_PGSSLKEY", key.clone())]);
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Vec<_>>()
    };
    let out = run_with(&bed, restore(false), &["verify", "--drill"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect to database") && out.stderr.contains("RESTORE_PGSSLCERT"), "{}", out.stderr);
    let out = run_with(&bed, restore(true), &["verify", "--drill"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains(" ok: "), "{}", out.stdout);
    assert_eq!(bed.pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pbdrill%'").expect("q").trim(), "0", "scratch databases dropped");
}

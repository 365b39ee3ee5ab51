//! Dumps encrypted at rest with age (DUMP_RECIPIENTS / RESTORE_IDENTITY_FILE), proved on
//! the real test bed: what the bucket holds, verify without the key, restore and the
//! drill with it, and every way of getting the keys wrong.

use std::io::Read;

use crate::support::*;
use age::secrecy::ExposeSecret;
use age::x25519::Identity;
use object_store::ObjectStoreExt;
use pachyderm_backup::catalog::DumpEncryption;
use sha2::Digest;

/// An identity file as `age-keygen -o` writes it.
fn identity_file(dir: &std::path::Path, name: &str, identity: &Identity) -> (String, String) {
    let path = dir.join(name);
    let text = format!("# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n", identity.to_public(), identity.to_string().expose_secret());
    std::fs::write(&path, text).expect("write the identity file");
    ("RESTORE_IDENTITY_FILE".into(), path.display().to_string())
}

/// Decrypted as any age tool would, independently of the program.
fn decrypt(stored: &[u8], identity: &Identity) -> Vec<u8> {
    let mut plain = Vec::new();
    age::Decryptor::new(stored)
        .expect("an age file")
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .expect("our recipient")
        .read_to_end(&mut plain)
        .expect("decrypts whole");
    plain
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What must never be readable in the bucket: the fixture's chunk-encryption key
/// (storage.keys), raw and as pg_dump writes bytea, and the schema's text.
fn secrets() -> Vec<Vec<u8>> {
    let key = sha2::Sha256::digest(b"fixture chunk encryption secret").to_vec();
    vec![key.clone(), hex::encode(&key).into_bytes(), b"storage.keys".to_vec(), b"CREATE TABLE".to_vec()]
}

fn databases_on(pg: &TempPostgres) -> String {
    pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname IN ('pachyderm', 'dex') OR datname LIKE 'pbdrill%'").expect("q").trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dumps_hold_no_plaintext_and_restore_only_with_the_identity() {
    let mut bed = Bed::new(BedOptions { chunks: 8, ..Default::default() }).await;
    let (ours, theirs, stranger) = (Identity::generate(), Identity::generate(), Identity::generate());
    let recipients = vec![ours.to_public().to_string(), theirs.to_public().to_string()];
    bed.set("DUMP_RECIPIENTS", &recipients.join(","));
    let before = (table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex"));
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(!out.stderr.contains("UNENCRYPTED"), "no warning when encrypted:\n{}", out.stderr);

    // The bucket holds ciphertext only; its size and SHA-256 are the manifest's.
    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!(m.databases.len(), 2);
    for db in &m.databases {
        assert_eq!(db.file, format!("databases/{}.pgdump.age", db.name));
        assert_eq!(db.encryption, Some(DumpEncryption { format: "age".into(), recipients: recipients.clone() }));
        let stored = read(&bed.target, &format!("backups/{}/{}", m.backup_id, db.file)).await;
        assert_eq!((stored.len() as u64, hex::encode(sha2::Sha256::digest(&stored))), (db.size, db.sha256.clone()));
        assert!(stored.starts_with(b"age-encryption.org/v1\n") && !stored.starts_with(b"PGDMP"), "{}: not an age file", db.name);
        let plain = decrypt(&stored, &theirs);
        assert!(plain.starts_with(b"PGDMP"), "{}: the plaintext is pg_dump's custom format", db.name);
        assert!(contains(&plain, b"CREATE TABLE"), "the plaintext has the schema's text: the search below means something");
        for secret in secrets() {
            assert!(!contains(&stored, &secret), "{}: {:?} is readable in the bucket", db.name, String::from_utf8_lossy(&secret));
        }
        if db.name == "pachyderm" {
            assert!(contains(&plain, b"storage.keys"));
        }
    }

    // verify --deep checks the ciphertext without any key.
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains(" ok: "), "{}", out.stdout);

    // The source is lost.
    bed.pg.psql("postgres", "DROP DATABASE pachyderm WITH (FORCE)").expect("drop");
    bed.pg.psql("postgres", "DROP DATABASE dex WITH (FORCE)").expect("drop");
    let dir = tempfile::tempdir().expect("dir");
    let restore = restore_env(&bed.pg, "file:///nonexistent");

    // No identity: exit 2, naming the variable and the recipients; nothing created.
    let out = run_with(&bed, restore.clone(), &["restore", "--skip-objects"]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("RESTORE_IDENTITY_FILE") && out.stderr.contains(&recipients[0]), "{}", out.stderr);
    assert_eq!(databases_on(&bed.pg), "0", "nothing was written");

    // A stranger's identity: exit 1, saying whose the dump is and whose the key is.
    let mut env = restore.clone();
    env.push(identity_file(dir.path(), "stranger.txt", &stranger));
    let out = run_with(&bed, env, &["restore", "--skip-objects"]).await;
    out.expect_code(1);
    assert!(
        out.stderr.contains("matches none") && out.stderr.contains(&recipients[1]) && out.stderr.contains(&stranger.to_public().to_string()),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(stranger.to_string().expose_secret()), "the secret key is printed");
    assert_eq!(databases_on(&bed.pg), "0", "nothing was written");

    // The identity of either recipient: every row back.
    let mut env = restore.clone();
    env.push(identity_file(dir.path(), "theirs.txt", &theirs));
    let out = run_with(&bed, env.clone(), &["restore", "--skip-objects"]).await;
    out.expect_code(0);
    assert_eq!((table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex")), before, "every table's rows are back");

    // A flipped byte in the ciphertext: the checksum of the stored bytes names it (age's
    // own authentication stops the plaintext at the damaged chunk).
    let pachyderm = m.databases.iter().find(|d| d.name == "pachyderm").expect("dumped");
    let key = format!("backups/{}/{}", m.backup_id, pachyderm.file);
    let original = read(&bed.target, &key).await;
    let mut damaged = original.to_vec();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x20;
    bed.target.put(&key.as_str().into(), damaged.into()).await.expect("damage");
    let out = run_with(&bed, env, &["restore", "--skip-objects", "--clean"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("the dump is damaged") && out.stderr.contains(&pachyderm.sha256), "{}", out.stderr);
    bed.target.put(&key.as_str().into(), original.into()).await.expect("repair");

    // The drill decrypts too, and without the identity it is a configuration error.
    let mut drill = restore_env(&bed.pg, "");
    drill.push(identity_file(dir.path(), "ours.txt", &ours));
    let out = run_with(&bed, drill, &["verify", "--drill"]).await;
    out.expect_code(0);
    assert!(out.logs().iter().any(|l| l["message"] == "drill: metadata and objects compared" && l["chunks"] == 8 && l["missing"] == 0), "{}", out.stderr);
    let out = run_with(&bed, restore_env(&bed.pg, ""), &["verify", "--drill"]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("RESTORE_IDENTITY_FILE"), "{}", out.stderr);
    assert_eq!(bed.pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pbdrill%'").expect("q").trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_dumps_are_warned_about_and_bad_keys_exit_2() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 3, ..Default::default() }).await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let warned: Vec<String> = out
        .logs()
        .iter()
        .filter(|l| l["level"] == "WARN")
        .filter_map(|l| l["message"].as_str().map(str::to_string))
        .filter(|m| m.contains("UNENCRYPTED") && m.contains("DUMP_RECIPIENTS") && m.contains("chunk-encryption keys"))
        .collect();
    assert_eq!(warned.len(), 2, "one warning per dump, naming the risk:\n{}", out.stderr);
    let m = bed.manifests().await.pop().expect("a backup");
    let pachyderm = m.databases.iter().find(|d| d.name == "pachyderm").expect("dumped");
    assert_eq!((pachyderm.file.as_str(), &pachyderm.encryption), ("databases/pachyderm.pgdump", &None));
    let stored = read(&bed.target, &format!("backups/{}/{}", m.backup_id, pachyderm.file)).await;
    assert!(stored.starts_with(b"PGDMP") && contains(&stored, b"storage.keys"), "plaintext is what the encrypted test searches for");

    // An identity given for a plaintext backup is simply not needed.
    let dir = tempfile::tempdir().expect("dir");
    let mut env = restore_env(&bed.pg, "file:///nonexistent");
    env.push(identity_file(dir.path(), "key.txt", &Identity::generate()));
    run_with(&bed, env, &["restore", "--skip-objects", "--clean"]).await.expect_code(0);

    // Bad keys: exit 2, named, nothing touched, no secret echoed.
    let folders = bed.folders().await;
    let requests = bed.kube.requests().len();
    let secret = Identity::generate().to_string().expose_secret().to_string();
    for (value, fragment) in [
        ("age1notakey", "not an age X25519 recipient"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not an age X25519 recipient"),
        (secret.as_str(), "is an age identity"),
    ] {
        let mut env = bed.env();
        env.push(("DUMP_RECIPIENTS".into(), value.into()));
        let out = run_to_end(binary(&["run"], &env)).await;
        out.expect_code(2);
        assert!(out.stderr.lines().any(|l| l.contains("DUMP_RECIPIENTS") && l.contains(fragment)), "{value}:\n{}", out.stderr);
        assert!(!out.stderr.contains(&secret) && !out.stdout.contains(&secret), "the secret key is printed");
    }
    assert_eq!((bed.folders().await, bed.kube.requests().len()), (folders, requests), "nothing touched");

    let public = Identity::generate().to_public().to_string();
    std::fs::write(dir.path().join("public.txt"), format!("{public}\n")).expect("write");
    let garbled = format!("{}{}\n", &secret[..secret.len() - 1], if secret.ends_with('Q') { 'P' } else { 'Q' });
    std::fs::write(dir.path().join("garbled.txt"), garbled).expect("write");
    for (file, fragment) in [("missing.txt", "cannot be read"), ("public.txt", "is a recipient"), ("garbled.txt", "not an age X25519 identity")] {
        let mut env = restore_env(&bed.pg, "");
        env.push(("RESTORE_IDENTITY_FILE".into(), dir.path().join(file).display().to_string()));
        let out = run_with(&bed, env, &["verify", "--drill"]).await;
        out.expect_code(2);
        assert!(out.stderr.lines().any(|l| l.contains("RESTORE_IDENTITY_FILE") && l.contains(fragment)), "{file}:\n{}", out.stderr);
        assert!(!out.stderr.contains(&secret[16..]), "the file's content is printed");
    }
}

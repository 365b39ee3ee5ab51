//! The command line: parse arguments, set up logging and signals, run a command, map
//! its outcome to its exit code (`exit::ExitCode`: 0 ok, 1 failed, 2 bad configuration,
//! 3 locked, 4 resume failed). Everything else lives in the library.

use clap::{Parser, Subcommand};
use pachyderm_backup::commands::{self, Failure};
use pachyderm_backup::config::{self, LogFormat, RawEnv, vars};
use pachyderm_backup::exit::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pachyderm-backup",
    version,
    about = "Back up a Pachyderm cluster: pause, dump PostgreSQL, copy the bucket, resume. Configured by environment variables (see `pachyderm-backup variables`).",
    // No default command: a bare invocation prints this help, it never pauses a cluster.
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One full pause → backup → resume cycle, then retention (the CronJob's command).
    Run {
        /// Copy every object again under fresh blob keys, trusting nothing in the pool
        /// (after damage that `verify` could not pin down; costs one full copy).
        #[arg(long)]
        full: bool,
    },
    /// One shard of a sharded pre-copy (COPY_SHARDS > 1): what each pod of the run's copy Job runs.
    CopyShard {
        /// The run's backup id: the shard's listing goes into its folder.
        #[arg(long)]
        backup: String,
        /// How many shards the key space is cut into (COPY_SHARDS of the run).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        shards: u32,
        /// This shard: the Job's completion index, which Kubernetes sets.
        #[arg(long, env = "JOB_COMPLETION_INDEX")]
        index: u32,
        /// The backup whose listing tells what the pool already holds.
        #[arg(long)]
        reference: Option<String>,
        /// Every object under a fresh blob key (`run --full`, or a damaged pool).
        #[arg(long)]
        full: bool,
    },
    /// The preflight alone: configuration, Kubernetes permissions, pg_dump, databases, buckets, Pushgateway. Pauses nothing (the chart's `helm test`).
    Check,
    /// The backups in the target bucket: id, age, sizes, downtime, and the retention rule keeping each.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also show incomplete folders (runs that died before their manifest).
        #[arg(long)]
        all: bool,
    },
    /// Resume a cluster that a dead run left paused.
    Resume {
        /// Only if no live run holds the Lease (the resume guard CronJob).
        #[arg(long)]
        if_stale: bool,
    },
    /// Apply the retention policy and collect unreferenced blobs.
    Retention {
        /// Print the plan, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a backup into the PostgreSQL server of RESTORE_PG* and the bucket of RESTORE_URL.
    Restore {
        /// The backup to restore (default: the newest complete one).
        #[arg(long)]
        backup: Option<String>,
        /// Replace the content of non-empty destination databases.
        #[arg(long)]
        clean: bool,
        /// Restore into a non-empty bucket; objects already restored (same size and checksum) are skipped.
        #[arg(long)]
        force: bool,
        /// Print the saved Kubernetes objects instead, as one List for `kubectl apply -f -` (nothing is restored or applied).
        #[arg(long, conflicts_with = "helm_values")]
        cluster_objects: bool,
        /// Print the saved Helm values of Pachyderm's release instead (HELM_RELEASE).
        #[arg(long)]
        helm_values: bool,
        /// Restore the objects only.
        #[arg(long)]
        skip_databases: bool,
        /// Restore the databases only.
        #[arg(long)]
        skip_objects: bool,
    },
    /// Check a backup: every file present with its size; --deep re-reads every byte; --drill restores the databases into scratch ones and checks metadata against objects.
    Verify {
        #[arg(long, conflicts_with = "all")]
        backup: Option<String>,
        /// Every complete backup.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        deep: bool,
        #[arg(long)]
        drill: bool,
    },
    /// Print every environment variable the program reads.
    Variables {
        #[arg(long)]
        json: bool,
    },
    /// A local demo cycle: throwaway PostgreSQL with a Pachyderm-like fixture, local-directory buckets, no cluster.
    Demo {
        /// Where the demo's buckets go.
        #[arg(long, default_value = "/tmp/pachyderm-backup-demo")]
        dir: std::path::PathBuf,
        /// Number of chunk objects in the demo bucket.
        #[arg(long, default_value_t = 200)]
        objects: u64,
    },
}

/// Text for a person at a terminal, JSON lines for everything else (unless LOG_FORMAT
/// says). One JSON object per line with unique keys (tracing-flat-json): the event's
/// fields and every enclosing span's (the run's `backup_id`, the `phase`) at the top
/// level, so jq, Loki and Elasticsearch read them as they are.
fn init_logging(raw: &RawEnv) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (format, filter) = config::log_settings(raw);
    let format = if raw.log_format.is_some() {
        format
    } else if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    };
    // Whatever RUST_LOG says, the failure's last line is written.
    let filter = EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| EnvFilter::new(vars::RUST_LOG.default_value().unwrap_or_default()))
        .add_directive(EXIT_DIRECTIVE.parse().expect("a valid directive"));
    match format {
        LogFormat::Json => tracing_subscriber::registry().with(filter).with(tracing_flat_json::FlatJsonLayer::new(std::io::stderr)).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal).init(),
    }
}

/// The target of a failure's last line, which no RUST_LOG filters out.
const EXIT_TARGET: &str = "pachyderm_backup::exit";
const EXIT_DIRECTIVE: &str = "pachyderm_backup::exit=error";

fn main() -> std::process::ExitCode {
    // Files this process creates (a file:// backup bucket, restored objects) hold
    // dumps with Pachyderm's chunk keys: owner-only, whatever umask the pod has.
    // SAFETY: umask only swaps the process's creation mask; no memory is involved.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    let raw = match RawEnv::from_process() {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::Config.into();
        }
    };
    let command = cli.command;
    init_logging(&raw);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::Failed.into();
        }
    };
    let result = runtime.block_on(async move {
        let stop = commands::watch_signals();
        match command {
            Command::Run { full } => commands::run(&raw, stop, full).await,
            Command::CopyShard { backup, shards, index, reference, full } => {
                let task = pachyderm_backup::shards::ShardTask { backup_id: backup, index, count: shards, reference, full };
                commands::copy_shard(&raw, stop, task).await
            }
            Command::Check => commands::check(&raw).await,
            Command::List { json, all } => commands::list(&raw, json, all).await,
            Command::Resume { if_stale } => commands::resume(&raw, if_stale).await,
            Command::Retention { dry_run } => commands::retention(&raw, dry_run).await,
            Command::Restore { backup, clean, force, cluster_objects, helm_values, skip_databases, skip_objects } => {
                commands::restore(&raw, commands::RestoreArgs { backup, clean, force, cluster_objects, helm_values, skip_databases, skip_objects }).await
            }
            Command::Verify { backup, all, deep, drill } => commands::verify(&raw, commands::VerifyArgs { backup, all, deep, drill }).await,
            Command::Variables { json } => commands::variables(json),
            Command::Demo { dir, objects } => commands::demo(&raw, &dir, objects, stop).await,
        }
    });
    match result {
        Ok(()) => ExitCode::Ok.into(),
        // Once, as the last line: what failed, what state the cluster is in, what to do.
        Err(Failure { code, message, phase, reason, span }) => {
            let _in_run = span.as_ref().map(tracing::Span::enter);
            tracing::error!(target: EXIT_TARGET, exit_code = code.code(), phase, reason, "{message}");
            code.into()
        }
    }
}

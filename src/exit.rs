//! The process's exit codes, one meaning each: what a CronJob, a script or an alert
//! tells apart (README, "Exit codes").

/// How a command ended. The numbers are part of the interface: never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The command did what it was asked (for a run: the backup is complete, its
    /// manifest written).
    Ok = 0,
    /// It failed; for a run, the cluster was resumed (or never paused) and no manifest
    /// was written, or the backup is complete but retention failed.
    Failed = 1,
    /// Invalid configuration (including a prefix holding another cluster's backups, or
    /// encrypted dumps without RESTORE_IDENTITY_FILE): nothing was touched.
    Config = 2,
    /// Another run holds the Lease, or another writer the backup bucket's lock: nothing
    /// was touched.
    Locked = 3,
    /// Resuming the cluster failed: it may still be paused.
    ResumeFailed = 4,
}

impl ExitCode {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn the_numbers_are_the_documented_ones() {
        let all = [ExitCode::Ok, ExitCode::Failed, ExitCode::Config, ExitCode::Locked, ExitCode::ResumeFailed];
        assert_eq!(all.map(ExitCode::code), [0, 1, 2, 3, 4]);
    }
}

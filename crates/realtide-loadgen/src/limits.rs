//! Process limits.

use anyhow::Result;

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    Ok(rlimit::increase_nofile_limit(u64::MAX)?)
}

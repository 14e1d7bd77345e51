//! Process limits.

use anyhow::Result;
use rlimit::Resource;

/// Open files wanted for the largest runs (tens of thousands of sockets).
const WANTED: u64 = 1 << 20;

/// Raises the open-file limit: the hard limit too when allowed (root), then the soft limit to
/// the hard one. Returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    let (_, hard) = Resource::NOFILE.get()?;
    if hard < WANTED {
        // Only privileged processes may raise the hard limit; otherwise keep the old one.
        let _ = Resource::NOFILE.set(WANTED, WANTED);
    }
    Ok(rlimit::increase_nofile_limit(u64::MAX)?)
}

//! `oxbus reload --pid PID` (systemd's `ExecReload=`): asks a running server for a rolling
//! restart of its workers and waits until the new ones serve. The signalling and waiting
//! are `crate::lifecycle::reload`'s; this file checks the arguments and prints the line.

use super::{CliError, runtime};

/// One line when the reload is done; an error otherwise.
pub fn command(pid: u32, timeout: f64) -> Result<(), CliError> {
    let wait = std::time::Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or(CliError::Timeout(timeout))?;
    let rt = runtime()?;
    let started = std::time::Instant::now();
    let s = rt
        .block_on(crate::lifecycle::reload::reload(pid, wait))
        .map_err(CliError::Reload)?;
    println!(
        "server {pid} reloaded in {:.1} s: worker generation {} serving",
        started.elapsed().as_secs_f64(),
        s.generation
    );
    Ok(())
}

//! Envoy as Kuma's kuma-dp runs it: the command line, dying with its agent, and signals.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::RunConfig;

/// Envoy's `--version` output (trimmed), or why it cannot be run.
pub fn version(binary_path: &str) -> std::io::Result<String> {
    let out = std::process::Command::new(binary_path)
        .arg("--version")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Envoy's command line, as Kuma's kuma-dp builds it.
pub fn command(a: &RunConfig, bootstrap: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&a.binary_path);
    cmd.arg("--config-path")
        .arg(bootstrap)
        .arg("--drain-time-s")
        .arg(a.drain_time.as_secs().to_string())
        .args(["--drain-strategy", "immediate", "--disable-hot-restart"])
        .args(["--log-level", &a.envoy_log_level]);
    // Without --concurrency, Envoy sizes its workers by the CPUs it may run on (its default
    // since `--cpuset-threads` became one).
    if let Some(n) = a.concurrency {
        cmd.args(["--concurrency", &n.to_string()]);
    }
    kill_with_parent(&mut cmd);
    cmd
}

/// Asks the kernel to SIGKILL the child when this process dies (Linux's parent-death signal),
/// as Kuma's kuma-dp does: a kuma-dp killed without warning must not leave its Envoy running
/// with the ports and the identity of a proxy nobody supervises.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn kill_with_parent(cmd: &mut tokio::process::Command) {
    // The signal is tied to the thread that forks: spawn Envoy from a thread that lives as long
    // as the agent (`kuma-dp run` spawns it from the main thread, the runtime's `block_on`).
    //
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // `prctl` system call, which is async-signal-safe, and allocates nothing.
    let parent = Pid::this();
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("kuma-dp exited while starting Envoy"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_: &mut tokio::process::Command) {}

/// Sends `signal` to Envoy (`pid`), warning when it cannot.
pub fn forward(pid: Option<Pid>, signal: Signal) {
    if let Some(pid) = pid
        && let Err(e) = kill(pid, signal)
    {
        tracing::warn!(%signal, error = %kuma_core::errors::Chain(&e), "cannot forward the signal to Envoy");
    }
}

//! The CPU scheduling policy of a role's threads (`WA_SCHED_POLICY`).
//!
//! Every confirmed publish hands frames to lapin's I/O thread and gets the
//! confirm back from it: two wake-ups across threads per message. Under the
//! default policy a woken thread preempts the one that woke it, so a burst of
//! publishes becomes a ping-pong of context switches. `SCHED_BATCH` threads
//! do not preempt on wake-up (the scheduler's tick or the waker's next block
//! lets them run), so the I/O thread finds many frames at once. In the bench
//! this took about 30 % off the relay's CPU per event, 10 % off the
//! receiver's per webhook and 7 % off the worker's per stored event
//! (docs/performance.md). Priorities and nice values are unchanged, and no
//! privilege is needed.

/// `--sched-policy` / `WA_SCHED_POLICY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedPolicy {
    /// `SCHED_BATCH`: throughput first; woken threads wait for the tick
    /// instead of preempting.
    Batch,
    /// `SCHED_OTHER`, the kernel's default.
    Normal,
}

/// The scheduling option of the `wa-ingest` binary's commands. The tools
/// binary sets none for itself (the load generator stays a normal client);
/// the roles the bench starts set their own.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct SchedArgs {
    /// Linux CPU scheduling policy of the process's threads.
    #[arg(
        long,
        env = "WA_SCHED_POLICY",
        value_name = "WA_SCHED_POLICY",
        value_enum,
        default_value = "batch",
        global = true
    )]
    pub sched_policy: SchedPolicy,
}

impl SchedPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Normal => "normal",
        }
    }

    /// Applies the policy to the calling thread; threads it starts afterwards
    /// inherit it. Call it before the runtime starts its threads.
    #[cfg(target_os = "linux")]
    pub fn apply_to_current_thread(self) -> std::io::Result<()> {
        let policy = match self {
            Self::Batch => libc::SCHED_BATCH,
            Self::Normal => libc::SCHED_OTHER,
        };
        // Both policies take the static priority 0.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid, initialised sched_param that outlives
        // the call; pid 0 is the calling thread.
        #[allow(unsafe_code)]
        let result = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Scheduling policies are Linux's: elsewhere the option does nothing.
    #[cfg(not(target_os = "linux"))]
    pub fn apply_to_current_thread(self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::SchedPolicy;

    /// The calling thread's policy, as the kernel reports it.
    fn current_policy() -> libc::c_int {
        // SAFETY: no arguments but the calling thread's pid 0.
        #[allow(unsafe_code)]
        unsafe {
            libc::sched_getscheduler(0)
        }
    }

    /// In a thread of its own, so the test harness's threads keep their policy.
    fn policy_of_a_thread_started_under(policy: SchedPolicy) -> libc::c_int {
        std::thread::spawn(move || {
            policy
                .apply_to_current_thread()
                .expect("no privilege is needed");
            std::thread::spawn(current_policy)
                .join()
                .expect("child thread")
        })
        .join()
        .expect("policy thread")
    }

    #[test]
    fn threads_started_afterwards_inherit_the_policy() {
        assert_eq!(
            policy_of_a_thread_started_under(SchedPolicy::Batch),
            libc::SCHED_BATCH
        );
        assert_eq!(
            policy_of_a_thread_started_under(SchedPolicy::Normal),
            libc::SCHED_OTHER
        );
    }
}

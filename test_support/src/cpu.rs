//! CPU accounting for benchmarks and tests: how many CPU seconds each program of a run used during a step, and
//! how much the rest of the machine used meanwhile, from `/proc`.
//!
//! A benchmark's rate on a shared 2-core machine says little alone: the programs of the run (the service, its
//! servers, the load generator) compete for the same cores, and other tenants take a varying share. The CPU each
//! program used per unit of work is the stable figure, and the share taken by processes outside the run says
//! when a rate is not to be trusted.
//!
//! "The run" is this process and every process descending from it, so a server's forked workers count too (each
//! PostgreSQL connection is a process forked by the postmaster). Each process's use is its own difference between
//! two snapshots (a process started in between counts from zero), summed by command name; a process that ended in
//! between is not counted for that step.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` and `/proc/stat` (USER_HZ): 100 on every Linux this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks of a process: all of them, and those spent in the kernel on its behalf.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    total: u64,
    kernel: u64,
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    /// When it started, in clock ticks since boot: with the pid, it names the process (pids are reused).
    started: u64,
    comm: String,
    ppid: u32,
    ticks: Ticks,
}

/// What `/proc/<pid>/stat` says of `pid`.
fn proc_stat(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` are space-separated.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state(3) ppid(4) … utime(14) stime(15) … starttime(22), numbered from 1 as in proc(5).
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Process {
        pid,
        started: field(22)?,
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: Ticks {
            total: utime + stime,
            kernel: stime,
        },
    })
}

/// CPU seconds (user and kernel) process `pid` has used so far; `None` once it is gone.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|process| process.ticks.total as f64 / TICKS_PER_SECOND)
}

/// Busy ticks of the whole machine (all processes, all cores), from the first line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already counted in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(total.saturating_sub(idle))
}

/// CPU ticks so far of this process and its descendants, and of the whole machine.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    /// The processes besides this one whose trees are counted.
    roots: Vec<u32>,
    machine: u64,
    processes: Vec<Process>,
}

impl CpuSnapshot {
    /// Reads the counters now, for this process and its descendants.
    pub fn take() -> Self {
        Self::take_with(&[])
    }

    /// Reads the counters now, for this process, the processes `roots` (servers that detached from this
    /// process, such as PostgreSQL's postmaster under `pg_ctl`) and the descendants of all of them.
    pub fn take_with(roots: &[u32]) -> Self {
        let mut all: Vec<Process> = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Some(process) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse().ok())
                    .and_then(proc_stat)
                {
                    all.push(process);
                }
            }
        }
        let mut generation: Vec<u32> = std::iter::once(std::process::id())
            .chain(roots.iter().copied())
            .collect();
        let mut processes: Vec<Process> = all.iter().filter(|p| generation.contains(&p.pid)).cloned().collect();
        // Then their descendants, one generation at a time.
        while !generation.is_empty() {
            let children: Vec<&Process> = all.iter().filter(|p| generation.contains(&p.ppid)).collect();
            generation = children.iter().map(|p| p.pid).collect();
            processes.extend(children.into_iter().cloned());
        }
        Self {
            roots: roots.to_vec(),
            machine: machine_busy_ticks().unwrap_or(0),
            processes,
        }
    }

    /// A new snapshot of the same processes.
    pub fn again(&self) -> Self {
        Self::take_with(&self.roots)
    }

    /// The ticks `process` had in this snapshot (none if it had not started).
    fn ticks_of(&self, process: &Process) -> Ticks {
        self.processes
            .iter()
            .find(|p| p.pid == process.pid && p.started == process.started)
            .map_or(Ticks::default(), |p| p.ticks)
    }
}

/// CPU used between two snapshots.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// CPU seconds by program: all, and in the kernel.
    pub programs: Vec<(String, f64, f64)>,
    /// CPU seconds of the processes counted: this one, the roots, and their descendants.
    pub ours: f64,
    /// CPU seconds of every other process on the machine (other builds, other tenants' work, …).
    pub others: f64,
    /// CPU seconds the machine had (cores × wall time).
    pub available: f64,
}

impl CpuUse {
    /// What was used from `before` to `after`, `wall` apart.
    pub fn between(before: &CpuSnapshot, after: &CpuSnapshot, wall: Duration) -> Self {
        let mut programs: Vec<(String, f64, f64)> = Vec::new();
        for process in &after.processes {
            let start = before.ticks_of(process);
            let seconds = process.ticks.total.saturating_sub(start.total) as f64 / TICKS_PER_SECOND;
            let kernel = process.ticks.kernel.saturating_sub(start.kernel) as f64 / TICKS_PER_SECOND;
            match programs.iter_mut().find(|(name, ..)| *name == process.comm) {
                Some((_, s, k)) => {
                    *s += seconds;
                    *k += kernel;
                }
                None => programs.push((process.comm.clone(), seconds, kernel)),
            }
        }
        programs.retain(|(_, seconds, _)| *seconds > 0.0);
        let ours: f64 = programs.iter().map(|(_, s, _)| s).sum();
        let machine = after.machine.saturating_sub(before.machine) as f64 / TICKS_PER_SECOND;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            programs,
            ours,
            others: (machine - ours).max(0.0),
            available: wall.as_secs_f64() * cores as f64,
        }
    }

    /// Nothing used yet: the start of a sum of [`CpuUse::add`].
    pub fn none() -> Self {
        Self {
            programs: Vec::new(),
            ours: 0.0,
            others: 0.0,
            available: 0.0,
        }
    }

    /// Adds `other`, a step measured apart (one slice of a measurement that is interleaved with others), by
    /// program name.
    pub fn add(&mut self, other: &CpuUse) {
        for (name, seconds, kernel) in &other.programs {
            match self.programs.iter_mut().find(|(n, ..)| n == name) {
                Some((_, s, k)) => {
                    *s += seconds;
                    *k += kernel;
                }
                None => self.programs.push((name.clone(), *seconds, *kernel)),
            }
        }
        self.ours += other.ours;
        self.others += other.others;
        self.available += other.available;
    }

    /// CPU seconds of the programs named `name`.
    pub fn of(&self, name: &str) -> f64 {
        self.programs
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, s, _)| s)
            .sum()
    }

    /// Share of the machine's CPU taken by processes outside this run.
    pub fn noise(&self) -> f64 {
        self.others / self.available.max(1e-9)
    }

    /// One line: each program's CPU seconds (kernel share in parentheses), the total, the others' and how busy
    /// the machine was.
    pub fn line(&self) -> String {
        // The kernel's share tells file-system work apart: ClickHouse 18.16 writes two files per column per
        // INSERT, and on some file systems creating them costs more than the INSERT itself (see docs/benchmarks.md).
        let parts: Vec<String> = self
            .programs
            .iter()
            .map(|(name, s, kernel)| format!("{name} {s:.2} (kernel {kernel:.2})"))
            .collect();
        format!(
            "CPU s: {} = {:.2} | other processes {:.2} | machine {:.0}% busy of {:.2} CPU s",
            parts.join(", "),
            self.ours,
            self.others,
            100.0 * (self.ours + self.others) / self.available.max(1e-9),
            self.available
        )
    }
}

/// How long a step took and the CPU it used.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall time of the step.
    pub elapsed: Duration,
    /// CPU used during it.
    pub cpu: CpuUse,
}

impl Timed {
    /// The step that started at `started`, when `before` was taken, and ends now.
    pub fn since(started: Instant, before: &CpuSnapshot) -> Self {
        let elapsed = started.elapsed();
        Self {
            elapsed,
            cpu: CpuUse::between(before, &before.again(), elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, started: u64, comm: &str, total: u64) -> Process {
        Process {
            pid,
            started,
            comm: comm.into(),
            ppid: 1,
            ticks: Ticks { total, kernel: 0 },
        }
    }

    fn snapshot(processes: Vec<Process>) -> CpuSnapshot {
        CpuSnapshot {
            roots: Vec::new(),
            machine: 0,
            processes,
        }
    }

    #[test]
    fn each_process_counts_its_own_difference() {
        let before = snapshot(vec![
            process(10, 1, "postgres", 100),
            process(11, 1, "postgres", 50),
            process(12, 1, "postgres", 70),
        ]);
        // 10 used 30 ticks; 11 ended (its 50 earlier ticks must not be taken from the others); 12's pid now
        // names a new process with 10 ticks; 13 started with 20.
        let after = snapshot(vec![
            process(10, 1, "postgres", 130),
            process(12, 9, "postgres", 10),
            process(13, 9, "postgres", 20),
            process(14, 9, "nats-server", 0),
        ]);
        let used = CpuUse::between(&before, &after, Duration::from_secs(1));
        assert!((used.of("postgres") - 0.6).abs() < 1e-9, "{}", used.line());
        assert_eq!(
            used.programs.len(),
            1,
            "a program that used nothing is left out: {}",
            used.line()
        );
    }

    #[test]
    fn slices_add_up_by_program() {
        let slice = |postgres: u64, nats: u64| {
            let before = snapshot(vec![process(10, 1, "postgres", 0), process(20, 1, "nats-server", 0)]);
            let after = snapshot(vec![
                process(10, 1, "postgres", postgres),
                process(20, 1, "nats-server", nats),
            ]);
            CpuUse::between(&before, &after, Duration::from_secs(1))
        };
        let mut sum = CpuUse::none();
        sum.add(&slice(100, 0));
        sum.add(&slice(50, 25));
        assert!((sum.of("postgres") - 1.5).abs() < 1e-9, "{}", sum.line());
        assert!((sum.of("nats-server") - 0.25).abs() < 1e-9, "{}", sum.line());
        assert!((sum.ours - 1.75).abs() < 1e-9, "{}", sum.line());
        assert!(sum.available >= 2.0, "two seconds of wall time: {}", sum.line());
    }

    #[test]
    fn a_busy_child_counts_under_its_name() {
        let before = CpuSnapshot::take();
        let started = Instant::now();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh starts");
        std::thread::sleep(Duration::from_millis(600));
        let used = CpuUse::between(&before, &CpuSnapshot::take(), started.elapsed());
        child.kill().ok();
        child.wait().ok();
        // It spun for 0.6 s; even sharing a core with others it got a good part of that.
        assert!(used.of("sh") >= 0.1, "the child's CPU is counted: {}", used.line());
        assert!(used.ours >= used.of("sh"), "{}", used.line());
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}

//! What the figures depend on: the machine, the disk, and process memory and CPU.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most ever resident.
    pub hwm: u64,
}

/// Memory of this process.
pub fn memory() -> Result<Memory> {
    memory_of("self")
}

/// Memory of process `pid` (`"self"` for this one).
pub fn memory_of(pid: &str) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |field: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
        let n: u64 = line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot read '{line}'"))?;
        Ok(n * 1024)
    };
    Ok(Memory {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
    })
}

/// CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat`.
/// Assumes the usual 100 clock ticks per second.
pub fn cpu_time(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces; fields follow it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse()
            .context("bad /proc stat field")
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// One line describing the machine: CPU model, cores, kernel, memory.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB RAM", kib as f64 / (1 << 20) as f64))
        })
        .unwrap_or_default();
    format!("{model}, {cores} cores available, Linux {kernel}, {mem}")
}

/// The filesystem type `path` lives on, from `/proc/mounts` (longest matching mount point).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// The system temporary directory if it is on a disk; the current directory
/// otherwise (a tmpfs would make every fsync free and the figures meaningless).
pub fn disk_temp_dir() -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    if !matches!(fs_type(&tmp).as_deref(), Some("tmpfs" | "ramfs")) {
        return Ok(tmp);
    }
    let cwd = std::env::current_dir()?;
    if matches!(fs_type(&cwd).as_deref(), Some("tmpfs" | "ramfs")) {
        bail!(
            "both {} and the current directory are in memory; give --dir on a disk",
            tmp.display()
        );
    }
    Ok(cwd)
}

/// Latency of `fdatasync` after a 4 KiB append in `dir`, in microseconds.
/// This is the floor under any single durable write on this disk.
#[derive(Debug, Clone, Copy)]
pub struct SyncLatency {
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
}

pub fn fdatasync_latency(dir: &Path, samples: u64) -> Result<SyncLatency> {
    let dir = tempfile::tempdir_in(dir)?;
    let file = std::fs::File::create(dir.path().join("probe"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..samples {
        file.write_all_at(&[1u8; 4096], i * 4096)?;
        let t = Instant::now();
        file.sync_data()?;
        hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
    }
    Ok(SyncLatency {
        mean: hist.mean(),
        p50: hist.value_at_quantile(0.5),
        p99: hist.value_at_quantile(0.99),
    })
}

/// Total CPU time the whole machine spent busy (not idle, not waiting for I/O), from `/proc/stat`.
fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(Duration::from_millis(busy * 10))
}

/// Measures the CPU some processes use over an interval, and what the rest of
/// the machine (other users of a shared machine) used meanwhile.
pub struct CpuMeter {
    started: Instant,
    pids: Vec<String>,
    before: Vec<Duration>,
    machine_before: Duration,
}

/// CPU used over an interval, in cores (CPU-seconds per second).
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// One figure per process given to [`CpuMeter::start`], in order.
    pub processes: Vec<f64>,
    /// Everything else on the machine.
    pub others: f64,
}

impl CpuMeter {
    /// Starts measuring processes `pids` (`"self"` for this one).
    pub fn start(pids: &[&str]) -> Result<CpuMeter> {
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let before = pids.iter().map(|p| cpu_time(p)).collect::<Result<_>>()?;
        Ok(CpuMeter {
            started: Instant::now(),
            pids,
            before,
            machine_before: machine_busy()?,
        })
    }

    pub fn stop(&self) -> Result<CpuUse> {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut processes = Vec::new();
        let mut ours = 0.0;
        for (pid, before) in self.pids.iter().zip(&self.before) {
            let used = cpu_time(pid)?.saturating_sub(*before).as_secs_f64();
            ours += used;
            processes.push(used / secs);
        }
        let machine = machine_busy()?
            .saturating_sub(self.machine_before)
            .as_secs_f64();
        Ok(CpuUse {
            processes,
            others: ((machine - ours) / secs).max(0.0),
        })
    }
}

/// The machine header both programs print first.
pub fn print_header(program: &str, dir: &Path) -> Result<()> {
    println!("# Courier benchmark: {program}\n");
    println!("- machine: {}", describe());
    println!(
        "- data directory: {} ({})",
        dir.display(),
        fs_type(dir).unwrap_or_else(|| "unknown filesystem".into())
    );
    let sync = fdatasync_latency(dir, 300)?;
    println!(
        "- disk: fdatasync after a 4 KiB append: mean {:.0} µs, p50 {} µs, p99 {} µs",
        sync.mean, sync.p50, sync.p99
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "- load average before the run: {} (the machine may be shared)",
        load.join(" ")
    );
    Ok(())
}

/// The PID of a process whose command name (`/proc/<pid>/comm`) is `name`,
/// if exactly one has it: for the CPU of a server this run did not start.
pub fn pid_named(name: &str) -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

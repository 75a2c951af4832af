//! `docs/experiment.md` and `docs/experiment.json`.

use std::fmt::Write;

use crate::run::Cell;
use crate::Args;

pub fn table(cells: &[Cell]) -> String {
    let mut t = String::from(
        "| mode | notifications | rate /s | sent | throughput /s | errors | p50 ms | p99 ms | p999 ms | accepted | delivered | lost | e2e p50 ms | e2e p99 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let lost = c.accepted.saturating_sub(c.delivered);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.1} | {:.1} % | {:.1} | {:.1} | {:.1} | {} | {}{} | {} | {} | {} |",
            c.mode,
            fault_label(&c.fault),
            c.rate,
            c.sent,
            c.throughput,
            100.0 * c.error_rate,
            c.p50_ms,
            c.p99_ms,
            c.p999_ms,
            c.accepted,
            c.delivered,
            if c.drained { String::new() } else { format!(" (after {:.0} s)", c.drain_secs) },
            lost,
            if c.mode == "async" { format!("{:.0}", c.e2e_p50_ms) } else { "–".into() },
            if c.mode == "async" { format!("{:.0}", c.e2e_p99_ms) } else { "–".into() },
        );
    }
    t
}

pub fn fault_label(fault: &str) -> &str {
    match fault {
        "healthy" => "healthy",
        "slow" => "slow (+200 ms)",
        "down" => "down (middle third)",
        other => other,
    }
}

pub fn write(args: &Args, command: &str, cells: &[Cell]) -> anyhow::Result<()> {
    let kind = if args.quick { "QUICK" } else { "REAL" };
    let build = if cfg!(debug_assertions) {
        "a debug build"
    } else {
        "a release build"
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# The reactions experiment: sync vs async\n");
    let _ = writeln!(
        md,
        "**This is a {kind} run** ({build}). Produced by `{command}` on a machine with {cores} cores \
         (load average at the end: {}). {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if args.quick {
            "A quick run is a smoke test of the experiment, with short runs on a shared machine: \
             read the shape, not the numbers. The full run is \
             `cargo run --release -p reactions-loadgen -- --rates 1,10,100,1000 --duration 20s --saturate`."
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Each row is one run of {:.0} s: `POST /v1/posts/{{id}}/reactions` sent open-loop at the rate \
         (latency measured from each request's intended send time, so queueing is not hidden), \
         with the notification service healthy, slowed by 200 ms, or down (503) for the middle \
         third of the run. *Accepted* are the 2xx answers; *delivered* the notifications stored \
         for them once the backlog drained (\"after N s\" when that took longer than {:.0} s); \
         *lost* = accepted − delivered; *e2e* is reaction accepted → notification stored, async \
         mode only (in sync mode it is part of the user's latency). Past saturation, delivered \
         can exceed accepted: a request that the load generator gave up on (5 s) may still \
         have been stored. Each run starts once the one before has left nothing behind (the \
         outbox empty, no notification still arriving); the rates past the last one given \
         (the search for saturation, with the notification service healthy) run after the \
         fault runs of their mode.\n",
        args.duration.as_secs_f64(),
        args.drain_deadline.as_secs_f64()
    );
    md.push_str(&table(cells));
    md.push_str(
        "\n![p99 latency of the user-facing call](experiment-latency.svg)\n\n\
         ![error rate of the user-facing call](experiment-errors.svg)\n\n\
         ![async: reaction accepted to notification stored](experiment-e2e.svg)\n\n",
    );
    md.push_str(
        "## The hypothesis, and what to look for\n\n\
         Expected, to be checked against the table rather than assumed: in async mode the \
         user's p99 stays flat across rates and across notification faults (the user waits for \
         one local commit), with no user-facing errors and no lost notification after the \
         outage (the backlog drains); in sync mode the user's latency follows the notification \
         service (+200 ms when it is slow) and requests fail while it is down. Where a row \
         disagrees, the row wins: on a 2-core machine that also runs the load generator, \
         Courier and both databases, high rates measure the machine as much as the design.\n\n\
         Raw numbers: [experiment.json](experiment.json).\n",
    );
    std::fs::write(args.out.join("experiment.md"), md)?;
    std::fs::write(
        args.out.join("experiment.json"),
        serde_json::to_string_pretty(cells)?,
    )?;
    Ok(())
}

//! `reactions-experiment`: the sync-vs-async experiment of the reactions
//! example. Starts the system (Courier + both services), then drives
//! `POST /v1/posts/{id}/reactions` open-loop at fixed rates, in both modes,
//! with the notification service healthy, slow and down for the middle third
//! of each run, and writes `docs/experiment.md` and SVG charts.
//!
//! ```sh
//! cargo run --release -p reactions-loadgen -- --quick
//! cargo run --release -p reactions-loadgen -- --rates 1,10,100,1000 --duration 20s --saturate
//! ```

mod charts;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "The reactions example's sync-vs-async experiment")]
pub struct Args {
    /// Request rates (requests per second), each run in every mode and fault.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub rates: Vec<u32>,
    /// Length of one run (one mode, fault and rate), e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After the rates, keep doubling the rate (healthy notification service)
    /// until throughput falls under 90 % of it, errors pass 1 % or p99 passes 1 s.
    #[arg(long)]
    pub saturate: bool,
    /// Modes to run: async, sync.
    #[arg(long, value_delimiter = ',', default_value = "async,sync")]
    pub modes: Vec<String>,
    /// Faults to run: healthy, slow (200 ms added), down (the middle third).
    #[arg(long, value_delimiter = ',', default_value = "healthy,slow,down")]
    pub faults: Vec<String>,
    /// How long to wait for the notification backlog to drain after a run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_deadline: Duration,
    /// Time limit of one user request (a request over it counts as an error).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Small and fast: rates 10,100,500 for 3 s each, no saturation search.
    #[arg(long)]
    pub quick: bool,
    /// Where experiment.md, experiment.json and the charts go.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = n.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in '{s}': use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rates = vec![10, 100, 500];
        args.duration = Duration::from_secs(3);
        args.saturate = false;
        args.drain_deadline = Duration::from_secs(30);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let results = run::experiment(&args).await?;
    std::fs::create_dir_all(&args.out)?;
    report::write(&args, &command, &results)?;
    charts::write(&args.out, &results)?;
    println!("\n{}", report::table(&results));
    println!("wrote {}/experiment.md and charts", args.out.display());
    Ok(())
}

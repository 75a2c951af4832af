//! Tables (printed as Markdown, so a run pastes into `docs/benchmarks.md`),
//! number formatting and goals.

use std::fmt::Write;

/// A Markdown table with aligned columns.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(title: &str, headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.headers[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                // Text left, numbers right, as a reader scans them.
                if i > 0 && cell.starts_with(|c: char| c.is_ascii_digit()) {
                    let _ = write!(s, " {cell:>w$} |");
                } else {
                    let _ = write!(s, " {cell:<w$} |");
                }
            }
            s.push('\n');
            s
        };
        let mut out = format!("\n### {}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, " {} |", "-".repeat(*w));
            } else {
                let _ = write!(out, "{}:|", "-".repeat(w + 1));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// `1234567.8` as `1,234,568`.
pub fn count(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as a latency cell: `87 µs`, `1.42 ms`, `230 ms`.
pub fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=99_999 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.0} ms", us as f64 / 1e3),
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A target to compare a figure with, and whether the figure meets it.
#[derive(Debug, Clone)]
pub struct Goal {
    pub text: String,
    /// `None` when the run was not the goal's size (a `--quick` run).
    pub met: Option<bool>,
}

impl Goal {
    pub fn new(text: impl Into<String>, met: bool) -> Goal {
        Goal {
            text: text.into(),
            met: Some(met),
        }
    }

    /// A goal this run cannot judge (it was smaller than the goal's case).
    pub fn not_applicable(text: impl Into<String>) -> Goal {
        Goal {
            text: text.into(),
            met: None,
        }
    }

    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a (smaller run)",
        }
    }
}

/// The closing table of a run: each goal, the figure it is judged on, the verdict.
pub fn goals_table(goals: &[(Goal, String)]) -> Table {
    let mut table = Table::new("Goals", ["goal", "figure", "verdict"]);
    for (goal, figure) in goals {
        table.row([
            goal.text.clone(),
            figure.clone(),
            goal.verdict().to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(1234567.8), "1,234,568");
        assert_eq!(micros(87), "87 µs");
        assert_eq!(micros(1420), "1.42 ms");
        assert_eq!(micros(230_000), "230 ms");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new("t", ["case", "msgs/s"]);
        t.row(["a", "1,000"]);
        let s = t.render();
        assert!(s.contains("| a    |  1,000 |"), "{s}");
        assert!(s.contains("| ---- |-------:|"), "{s}");
    }
}

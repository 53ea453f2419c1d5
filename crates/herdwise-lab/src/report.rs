//! Results: the side-by-side table for people, JSON for machines, SVG plots over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::record::Latency;
use crate::strategy::TierCounts;
use crate::LabError;

/// One second of one strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Second since the start.
    pub second: u64,
    /// Reads completed.
    pub reads: u64,
    /// Reads failed.
    pub errors: u64,
    /// Origin queries started.
    pub origin_queries: u64,
    /// Origin queries refused for overload.
    pub origin_rejected: u64,
    /// 99th percentile read latency, µs.
    pub p99_us: u64,
    /// Slowest read, µs.
    pub max_us: u64,
}

/// What one strategy did in a scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StrategyResult {
    /// Strategy (or engine) name.
    pub name: String,
    /// Reads (or operations) completed.
    pub reads: u64,
    /// Failed reads.
    pub errors: u64,
    /// Reads per second.
    pub reads_per_sec: f64,
    /// Latency percentiles, µs (absent for the in-process hit-path engines).
    pub latency_us: Option<Latency>,
    /// Origin queries during the run.
    pub origin_queries: Option<u64>,
    /// Origin queries refused.
    pub origin_rejected: Option<u64>,
    /// Most origin queries in flight at once.
    pub origin_peak_in_flight: Option<usize>,
    /// Where reads were answered.
    pub tiers: Option<TierCounts>,
    /// Scenario-specific figures.
    pub extra: BTreeMap<String, f64>,
    /// Per-second timeline.
    pub timeline: Vec<Point>,
}

impl StrategyResult {
    /// Share of reads answered by each tier (`l1`, `l2`, `any`), from the tier counts.
    pub fn hit_ratios(&self) -> Option<(f64, f64, f64)> {
        let t = self.tiers?;
        let total = (t.l1_hits + t.l2_hits + t.misses) as f64;
        if total == 0.0 {
            return None;
        }
        Some((
            t.l1_hits as f64 / total,
            t.l2_hits as f64 / total,
            (t.l1_hits + t.l2_hits) as f64 / total,
        ))
    }
}

/// One scenario, all its strategies.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Parameters it ran with.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Each strategy's result, in the order they ran.
    pub strategies: Vec<StrategyResult>,
    /// Ratios between strategies measured in this run (e.g. `herdwise/naive origin queries`).
    pub ratios: BTreeMap<String, f64>,
    /// Fault injections, as `(second, what)`.
    pub events: Vec<(f64, String)>,
}

impl ScenarioResult {
    /// The strategy called `name`.
    pub fn strategy(&self, name: &str) -> Option<&StrategyResult> {
        self.strategies.iter().find(|s| s.name == name)
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// `std::env::consts::OS` / ARCH.
    pub os: String,
    /// `redis-server --version`.
    pub redis: String,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC time of the run (RFC 3339).
    pub date: String,
    /// The command line.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// Each scenario.
    pub scenarios: Vec<ScenarioResult>,
}

fn fmt_num(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}µs")
    }
}

/// The human summary of one scenario: one row per strategy, then the ratios.
pub fn table(s: &ScenarioResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {} — {}", s.name, s.description);
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>7}",
        "strategy",
        "reads/s",
        "errors",
        "p50",
        "p99",
        "p99.9",
        "origin q",
        "peak",
        "L1 hit",
        "L2 hit",
        "any hit"
    );
    for r in &s.strategies {
        let (p50, p99, p999) = r
            .latency_us
            .map_or(("-".into(), "-".into(), "-".into()), |l| {
                (fmt_us(l.p50), fmt_us(l.p99), fmt_us(l.p999))
            });
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let (l1, l2, any) = r
            .hit_ratios()
            .map_or(("-".into(), "-".into(), "-".into()), |(a, b, c)| {
                (pct(a), pct(b), pct(c))
            });
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>7}",
            r.name,
            fmt_num(r.reads_per_sec),
            r.errors,
            p50,
            p99,
            p999,
            r.origin_queries.map_or("-".into(), |q| q.to_string()),
            r.origin_peak_in_flight
                .map_or("-".into(), |q| q.to_string()),
            l1,
            l2,
            any
        );
        for (k, v) in &r.extra {
            let _ = writeln!(out, "{:<18}   {k} = {}", "", fmt_num(*v));
        }
    }
    for (k, v) in &s.ratios {
        let _ = writeln!(out, "ratio {k} = {v:.3}");
    }
    for (t, what) in &s.events {
        let _ = writeln!(out, "event at {t:.1}s: {what}");
    }
    out
}

/// Reads one plotted figure off a timeline point.
type Metric = fn(&Point) -> f64;

/// Writes an SVG with origin queries/s, errors/s and p99 latency over time, one line per strategy.
pub fn plot(s: &ScenarioResult, path: &Path) -> Result<(), LabError> {
    let with_timeline: Vec<&StrategyResult> = s
        .strategies
        .iter()
        .filter(|r| !r.timeline.is_empty())
        .collect();
    if with_timeline.is_empty() {
        return Ok(());
    }
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((3, 1));
        let seconds = with_timeline
            .iter()
            .map(|r| r.timeline.len())
            .max()
            .unwrap_or(1) as u64;
        let series: [(&str, Metric); 3] = [
            ("origin queries / s", |p| p.origin_queries as f64),
            ("failed reads / s", |p| p.errors as f64),
            ("p99 read latency (ms)", |p| p.p99_us as f64 / 1000.0),
        ];
        let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
        for (panel, (title, value)) in panels.iter().zip(series) {
            let max = with_timeline
                .iter()
                .flat_map(|r| r.timeline.iter().map(value))
                .fold(1.0f64, f64::max);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} — {title}", s.name), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0u64..seconds, 0f64..max * 1.1)?;
            chart.configure_mesh().x_desc("second").draw()?;
            for (i, r) in with_timeline.iter().enumerate() {
                let color = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(
                        r.timeline.iter().map(|p| (p.second, value(p))),
                        color.stroke_width(2),
                    ))?
                    .label(r.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            for (t, _) in &s.events {
                let x = *t as u64;
                chart.draw_series(LineSeries::new(
                    vec![(x, 0.0), (x, max * 1.1)],
                    BLACK.mix(0.4),
                ))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| LabError::Plot(e.to_string()))
}

/// UTC now as RFC 3339 (no external time crate: civil-from-days).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_looks_like_rfc3339() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
        assert!(now.ends_with('Z'));
    }
}

//! The results of a `gundb bench` run: rows with their baselines and targets, printed as
//! a table, written as JSON or Markdown, and a chart of throughput against writers.

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Whether more or less of a measure is better.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// What a row is compared with, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub name: String,
    pub value: f64,
}

/// A goal for the report (not for tests).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// As the issue states it, e.g. "≥ 70% of raw sled".
    pub text: String,
    pub met: bool,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
    pub baseline: Option<Baseline>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(scenario: &str, measure: impl Into<String>, value: f64, unit: &str, better: Better) -> Self {
        Self {
            scenario: scenario.to_owned(),
            measure: measure.into(),
            value,
            unit: unit.to_owned(),
            better,
            baseline: None,
            ratio: None,
            target: None,
        }
    }

    pub fn against(mut self, name: impl Into<String>, value: f64) -> Self {
        self.ratio = (value > 0.0).then(|| self.value / value);
        self.baseline = Some(Baseline { name: name.into(), value });
        self
    }

    pub fn target(mut self, text: &str, met: bool) -> Self {
        self.target = Some(Target { text: text.to_owned(), met });
        self
    }
}

/// The machine a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub disk: String,
}

impl Machine {
    /// Read from `/proc` (Linux); what cannot be read says so.
    pub fn here(data_dir: &Path) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |name| name.trim().to_owned());
        let meminfo = read("/proc/meminfo");
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        let os = format!("Linux {}", read("/proc/sys/kernel/osrelease").trim());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            os,
            disk: disk_of(data_dir, &read("/proc/mounts")),
        }
    }
}

/// The file system and device of the longest mount point holding `path`.
fn disk_of(path: &Path, mounts: &str) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (device, mount, fs) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            path.starts_with(mount).then(|| (mount.len(), format!("{fs} on {device} (mounted at {mount})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_owned(), |(_, disk)| disk)
}

/// The line below which a Markdown report keeps what was there.
pub const KEEP_BELOW: &str = "<!-- Generated above by `gundb bench --markdown`; kept below when regenerated. -->";

/// A whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub rows: Vec<Row>,
}

fn human(value: f64, unit: &str) -> String {
    match unit {
        "events/s" | "ops/s" | "views/s" if value >= 1e6 => format!("{:.2} M {unit}", value / 1e6),
        "events/s" | "ops/s" | "views/s" if value >= 1e3 => format!("{:.1} k {unit}", value / 1e3),
        "bytes" if value >= 1024.0 * 1024.0 => format!("{:.1} MiB", value / (1024.0 * 1024.0)),
        _ if value >= 100.0 => format!("{value:.0} {unit}"),
        _ => format!("{value:.2} {unit}"),
    }
}

impl Report {
    /// The table, as printed on the terminal and in the Markdown report.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | measure | value | baseline (same run) | ratio | target |\n| --- | --- | ---: | --- | ---: | --- |\n",
        );
        for row in &self.rows {
            let baseline = row
                .baseline
                .as_ref()
                .map_or_else(String::new, |b| format!("{}: {}", b.name, human(b.value, &row.unit)));
            let ratio = row.ratio.map_or_else(String::new, |r| format!("{r:.2}×"));
            let target = row
                .target
                .as_ref()
                .map_or_else(String::new, |t| format!("{} {}", if t.met { "met:" } else { "**MISSED**:" }, t.text));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {baseline} | {ratio} | {target} |",
                row.scenario,
                row.measure,
                human(row.value, &row.unit)
            );
        }
        out
    }

    pub fn missed(&self) -> Vec<&Row> {
        self.rows.iter().filter(|row| row.target.as_ref().is_some_and(|t| !t.met)).collect()
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// Writes the report to `path`. Whatever an existing file has after the line
    /// [`KEEP_BELOW`] (notes written by hand) is kept.
    pub fn write_markdown(&self, path: &Path, chart: Option<&Path>) -> Result<()> {
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(KEEP_BELOW).map(|at| old[at..].to_owned()))
            .unwrap_or_else(|| format!("{KEEP_BELOW}\n"));
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# gundb bench: {}\n", self.date);
        let _ = writeln!(out, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            out,
            "Machine: {} ({} cores), {:.1} GiB memory, {}, disk: {}.\n",
            m.cpu, m.cores, m.memory_gib, m.os, m.disk
        );
        out.push_str(&self.table());
        let missed = self.missed();
        out.push('\n');
        if missed.is_empty() {
            out.push_str("Every target was met.\n");
        } else {
            for row in missed {
                let target = row.target.as_ref().map_or("", |t| t.text.as_str());
                let _ = writeln!(out, "- Missed: {} / {} ({target}).", row.scenario, row.measure);
            }
        }
        if let Some(chart) = chart {
            let name = chart.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let _ = writeln!(out, "\n![durable emit throughput against writers]({name})");
        }
        out.push('\n');
        out.push_str(&kept);
        std::fs::write(path, out)?;
        Ok(())
    }

    /// An SVG chart of durable emit throughput against writers, gundb and raw sled.
    pub fn write_chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        // Measures read "1 stream, 16 writers" or "10000 streams, 16 writers".
        let series = |many: bool, baseline: bool| -> Vec<(f64, f64)> {
            self.rows
                .iter()
                .filter(|row| row.scenario == "durable emit" && row.measure.contains("streams,") == many)
                .filter_map(|row| {
                    let writers: f64 = row.measure.split_whitespace().nth(2)?.parse().ok()?;
                    let value = if baseline { row.baseline.as_ref()?.value } else { row.value };
                    Some((writers, value / 1e3))
                })
                .collect()
        };
        let (one, many, sled) = (series(false, false), series(true, false), series(false, true));
        let top = one.iter().chain(&many).chain(&sled).map(|(_, y)| *y).fold(1.0, f64::max) * 1.15;
        let right = one.iter().map(|(x, _)| *x).fold(1.0, f64::max);
        let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("durable emit throughput (fsync on)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..right).log_scale(), 0f64..top)?;
        chart.configure_mesh().x_desc("concurrent writers").y_desc("k events/s").draw()?;
        for (points, name, color) in
            [(&one, "gundb, 1 stream", BLUE), (&many, "gundb, many streams", GREEN), (&sled, "raw sled", RED)]
        {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    }
}

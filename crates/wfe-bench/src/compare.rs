//! Side by side (issue #20): two results files of the same workloads, one measuring we-operator and
//! one the reference Go controller, each on a fresh control plane of the same shape. Writes the
//! combined JSON, one SVG per workload (latency CDFs of both, executions in flight over time for
//! the bursts) and the side-by-side section of docs/benchmarks.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use plotters::{coord::CoordTranslate, prelude::*};
use serde_json::{Value, json};

use crate::subject::method_of;

/// Markers of the side-by-side section of docs/benchmarks.md.
pub const BEGIN: &str =
    "<!-- BEGIN SIDE-BY-SIDE by `cargo xtask bench --reference`: do not edit by hand -->";
/// End marker.
pub const END: &str = "<!-- END SIDE-BY-SIDE -->";

/// One execution's instants (ms after the first create of its workload).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Create call sent.
    pub create_sent: Option<f64>,
    /// Job first seen.
    pub job_seen: Option<f64>,
    /// Job completion patch sent.
    pub complete_sent: Option<f64>,
    /// Succeeded (Completed) first seen.
    pub succeeded: Option<f64>,
    /// Lock release seen.
    pub released: Option<f64>,
}

impl Sample {
    fn dispatch(&self) -> Option<f64> {
        Some(self.job_seen? - self.create_sent?)
    }
    fn completion(&self) -> Option<f64> {
        Some(self.succeeded? - self.complete_sent?)
    }
}

/// Parses a `samples-*.csv` file written by the driver.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let f = |s: Option<&str>| s.and_then(|v| v.trim().parse::<f64>().ok());
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("name,"))
        .map(|l| {
            let mut c = l.split(',').skip(1);
            let create_sent = f(c.next());
            let _create_done = c.next();
            Sample {
                create_sent,
                job_seen: f(c.next()),
                complete_sent: f(c.next()),
                succeeded: f(c.next()),
                released: f(c.next()),
            }
        })
        .collect()
}

/// The samples file of a workload, by its name in the results.
fn samples_file(dir: &Path, workload: &str) -> PathBuf {
    let prefix = if workload.starts_with("steady") {
        "steady".to_string()
    } else if workload.starts_with("with-") {
        "new".to_string()
    } else {
        workload.to_string()
    };
    dir.join(format!("samples-{prefix}.csv"))
}

/// Sorted values and their cumulative fractions.
pub fn cdf(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v.max(0.1), (i + 1) as f64 / n))
        .collect()
}

/// Executions created and not yet released, every `step` ms.
pub fn in_flight(samples: &[Sample], step: f64) -> Vec<(f64, f64)> {
    let end = samples
        .iter()
        .filter_map(|s| s.released.or(s.succeeded).or(s.job_seen))
        .fold(0.0, f64::max);
    let mut out = Vec::new();
    let mut t = 0.0;
    while t <= end + step {
        let n = samples
            .iter()
            .filter(|s| s.create_sent.is_some_and(|c| c <= t) && s.released.is_none_or(|r| r > t))
            .count();
        out.push((t / 1000.0, n as f64));
        t += step;
    }
    out
}

/// ours / reference, as text.
pub fn ratio(ours: f64, reference: f64) -> String {
    if reference > 0.0 && ours.is_finite() {
        let r = ours / reference;
        if r < 0.01 {
            format!("{r:.4}x")
        } else {
            format!("{r:.2}x")
        }
    } else {
        "n/a".into()
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The names of the workloads of a results file, in their order.
fn workload_names(results: &Value) -> Vec<String> {
    results["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str().map(str::to_string))
        .collect()
}

/// A workload by name.
fn workload<'a>(results: &'a Value, name: &str) -> Option<&'a Value> {
    results["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
}

/// API requests per execution by HTTP method (ours are counted by verb).
fn by_method(w: &Value, ours: bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(m) = w["api_calls_per_execution_by_verb"].as_object() {
        for (k, v) in m {
            let key = if ours {
                method_of(k).to_string()
            } else {
                k.clone()
            };
            *out.entry(key).or_default() += num(v);
        }
    }
    out
}

/// The API server's CPU per execution, ms.
fn apiserver_ms(w: &Value) -> f64 {
    let n = num(&w["executions"]).max(1.0);
    num(&w["usage"]["cpu_s"]["kube-apiserver"]) * 1000.0 / n
}

/// One row: label, ours, reference, ratio.
type Row = (String, f64, f64);

fn rows_for(ours: &Value, reference: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    for kind in ["dispatch_latency_ms", "completion_propagation_ms"] {
        let label = if kind.starts_with("dispatch") {
            "dispatch"
        } else {
            "completion"
        };
        for p in ["p50", "p95", "p99", "max"] {
            rows.push((
                format!("{label} {p} (ms)"),
                num(&ours[kind][p]),
                num(&reference[kind][p]),
            ));
        }
    }
    rows.push((
        "dispatched per second".into(),
        num(&ours["dispatch_throughput_per_s"]),
        num(&reference["dispatch_throughput_per_s"]),
    ));
    rows.push((
        "drain: first create → last lock released (s)".into(),
        num(&ours["wall_s"]),
        num(&reference["wall_s"]),
    ));
    rows.push((
        "controller CPU per execution (ms)".into(),
        num(&ours["operator_cpu_ms_per_execution"]),
        num(&reference["operator_cpu_ms_per_execution"]),
    ));
    rows.push((
        "API server CPU per execution (ms)".into(),
        apiserver_ms(ours),
        apiserver_ms(reference),
    ));
    rows.push((
        "API requests per execution".into(),
        num(&ours["api_calls_per_execution"]),
        num(&reference["api_calls_per_execution"]),
    ));
    let (mo, mr) = (by_method(ours, true), by_method(reference, false));
    let mut methods: Vec<&String> = mo.keys().chain(mr.keys()).collect();
    methods.sort();
    methods.dedup();
    for m in methods {
        rows.push((
            format!("... {m}"),
            mo.get(m).copied().unwrap_or(0.0),
            mr.get(m).copied().unwrap_or(0.0),
        ));
    }
    rows.push((
        "controller peak RSS (MiB)".into(),
        num(&ours["operator_peak_rss_mib"]),
        num(&reference["operator_peak_rss_mib"]),
    ));
    rows
}

/// A goal of issue #20 and whether it was met.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The measured ratio(s).
    pub measured: String,
    /// Met.
    pub met: bool,
}

fn goals(ours: &Value, reference: &Value) -> Vec<Goal> {
    let mut out = Vec::new();
    let names = workload_names(ours);
    let pair = |n: &str| Some((workload(ours, n)?, workload(reference, n)?));
    let biggest_burst = names
        .iter()
        .filter(|n| n.starts_with("burst-"))
        .max_by_key(|n| n["burst-".len()..].parse::<usize>().unwrap_or(0))
        .cloned();
    if let Some(b) = biggest_burst.as_deref()
        && let Some((o, r)) = pair(b)
    {
        let mut worst: f64 = 0.0;
        let mut parts = Vec::new();
        for kind in ["dispatch_latency_ms", "completion_propagation_ms"] {
            for p in ["p50", "p95", "p99", "max"] {
                let q = num(&o[kind][p]) / num(&r[kind][p]);
                worst = worst.max(q);
                parts.push(format!(
                    "{} {p} {}",
                    &kind[..kind.find('_').unwrap_or(0)],
                    ratio(num(&o[kind][p]), num(&r[kind][p]))
                ));
            }
        }
        out.push(Goal {
            goal: format!(
                "{b}: every latency percentile (dispatch and completion, p50 to max) ≤ 0.5x"
            ),
            measured: parts.join(", "),
            met: worst <= 0.5,
        });
        let d = num(&o["wall_s"]) / num(&r["wall_s"]);
        out.push(Goal {
            goal: format!("{b}: drain ≤ 0.5x"),
            measured: ratio(num(&o["wall_s"]), num(&r["wall_s"])),
            met: d <= 0.5,
        });
    }
    let mut cpu_parts = Vec::new();
    let mut cpu_ok = true;
    let mut req_parts = Vec::new();
    let mut req_ok = true;
    let mut rss_parts = Vec::new();
    let mut rss_ok = true;
    for n in &names {
        let Some((o, r)) = pair(n) else { continue };
        let q = apiserver_ms(o) / apiserver_ms(r);
        cpu_ok &= q <= 0.6;
        cpu_parts.push(format!("{n} {}", ratio(apiserver_ms(o), apiserver_ms(r))));
        let a = num(&o["api_calls_per_execution"]) / num(&r["api_calls_per_execution"]);
        req_ok &= a <= 0.6;
        req_parts.push(format!(
            "{n} {}",
            ratio(
                num(&o["api_calls_per_execution"]),
                num(&r["api_calls_per_execution"])
            )
        ));
        let m = num(&o["operator_peak_rss_mib"]) / num(&r["operator_peak_rss_mib"]);
        rss_ok &= m <= 1.0 / 3.0;
        rss_parts.push(format!(
            "{n} {}",
            ratio(
                num(&o["operator_peak_rss_mib"]),
                num(&r["operator_peak_rss_mib"])
            )
        ));
        if n.starts_with("steady") {
            let (co, cr) = (
                num(&o["completion_propagation_ms"]["p99"]),
                num(&r["completion_propagation_ms"]["p99"]),
            );
            out.push(Goal {
                goal: format!("{n}: completion p99 at least 100x faster (≤ 0.01x)"),
                measured: format!("{} ({} vs {} ms)", ratio(co, cr), fmt(co), fmt(cr)),
                met: co / cr <= 0.01,
            });
        }
    }
    out.push(Goal {
        goal: "API server CPU per execution ≤ 0.6x at every size".into(),
        measured: cpu_parts.join(", "),
        met: cpu_ok && !cpu_parts.is_empty(),
    });
    out.push(Goal {
        goal: "API requests per execution ≤ 0.6x".into(),
        measured: req_parts.join(", "),
        met: req_ok && !req_parts.is_empty(),
    });
    out.push(Goal {
        goal: "controller peak RSS ≤ 1/3 on the same workload".into(),
        measured: rss_parts.join(", "),
        met: rss_ok && !rss_parts.is_empty(),
    });
    let (io, ir) = (
        num(&ours["scale"]["rss_idle_mib"]),
        num(&reference["scale"]["rss_idle_mib"]),
    );
    out.push(Goal {
        goal: "RSS idle with the finished WorkflowExecutions cached ≤ 1/3".into(),
        measured: format!("{} ({} vs {} MiB)", ratio(io, ir), fmt(io), fmt(ir)),
        met: io / ir <= 1.0 / 3.0,
    });
    out
}

/// The markdown section.
fn markdown(ours: &Value, reference: &Value, pictures: &[(String, String)]) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "_Side-by-side run: we-operator `{}` measured at {}, the reference at {}; reference commit `{}`{}._\n\n",
        ours["git"].as_str().unwrap_or("?"),
        ours["generated_at"].as_str().unwrap_or("?"),
        reference["generated_at"].as_str().unwrap_or("?"),
        reference["reference_commit"].as_str().unwrap_or("?"),
        if ours["quick"].as_bool() == Some(true) {
            " (**quick run: reduced sizes, not the published figures**)"
        } else {
            ""
        }
    ));
    md.push_str(&format!(
        "**We-operator:** {}\n\n**Reference:** {}\n\n",
        ours["operator"].as_str().unwrap_or(""),
        reference["operator"].as_str().unwrap_or("")
    ));
    if let Some(note) = reference["reference_audit"].as_str() {
        md.push_str(&format!("**Reference's audit:** {note}\n\n"));
    }
    md.push_str("### Goals of issue #20 (ratio = ours / reference; lower is better for us)\n\n| goal | measured | result |\n|---|---|---|\n");
    for g in goals(ours, reference) {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            g.goal,
            g.measured,
            if g.met { "**met**" } else { "**not met**" }
        ));
    }
    md.push('\n');
    let names = workload_names(ours);
    for n in &names {
        let (Some(o), Some(r)) = (workload(ours, n), workload(reference, n)) else {
            continue;
        };
        md.push_str(&format!(
            "#### {n}: {}\n\n| figure | we-operator | reference | ratio |\n|---|---|---|---|\n",
            o["description"].as_str().unwrap_or("")
        ));
        for (label, a, b) in rows_for(o, r) {
            md.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                fmt(a),
                fmt(b),
                ratio(a, b)
            ));
        }
        let status = |w: &Value| {
            format!(
                "{} created, {} dispatched, {} succeeded, {} released{}",
                w["created"],
                w["dispatched"],
                w["succeeded"],
                w["released"],
                if w["timed_out"].as_bool() == Some(true) {
                    " (**timed out**)"
                } else {
                    ""
                }
            )
        };
        md.push_str(&format!(
            "\nwe-operator: {}; reference: {}.\n\n",
            status(o),
            status(r)
        ));
        if let Some((_, file)) = pictures.iter().find(|(w, _)| w == n) {
            md.push_str(&format!("![{n}: ours against the reference]({file})\n\n"));
        }
    }
    let (so, sr) = (&ours["scale"], &reference["scale"]);
    md.push_str(&format!(
        "#### Start with {} finished WorkflowExecutions\n\n| figure | we-operator | reference | ratio |\n|---|---|---|---|\n",
        so["existing"]
    ));
    for (label, k) in [
        ("start → ready (s)", "ready_s"),
        ("ready → idle (s)", "settle_s"),
        ("CPU from start to idle (s)", "startup_cpu_s"),
        ("RSS idle with them cached (MiB)", "rss_idle_mib"),
        ("peak RSS (MiB)", "peak_rss_mib"),
    ] {
        let (a, b) = (num(&so[k]), num(&sr[k]));
        md.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            fmt(a),
            fmt(b),
            ratio(a, b)
        ));
    }
    md.push('\n');
    md
}

const OURS_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const REF_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Draws one CDF panel (log-scaled latency).
fn cdf_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    ours: &[(f64, f64)],
    reference: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let xs = ours.iter().chain(reference).map(|p| p.0);
    let lo = xs.clone().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = xs.fold(0.0, f64::max).max(lo * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of executions")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    both_curves(&mut chart, ours, reference, SeriesLabelPosition::LowerRight)
}

/// The two curves (ours, the reference's) of a panel and their legend.
fn both_curves<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    ours: &[(f64, f64)],
    reference: &[(f64, f64)],
    legend: SeriesLabelPosition,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    for (data, color, label) in [
        (ours, OURS_COLOR, "we-operator"),
        (reference, REF_COLOR, "reference"),
    ] {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Draws executions in flight over time.
fn in_flight_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    ours: &[(f64, f64)],
    reference: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x_hi = ours
        .iter()
        .chain(reference)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let y_hi = ours
        .iter()
        .chain(reference)
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "executions in flight (created, lock not yet released)",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_hi * 1.02, 0.0..y_hi * 1.05)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds after the first create")
        .y_desc("executions")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    both_curves(&mut chart, ours, reference, SeriesLabelPosition::UpperRight)
}

/// Draws the picture of one workload into `path`.
pub fn picture(path: &Path, name: &str, ours: &[Sample], reference: &[Sample]) -> Result<()> {
    let burst = name.starts_with("burst-") && ours.len() > 1;
    let height = if burst { 760 } else { 400 };
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = if burst {
        root.split_vertically(400)
    } else {
        root.split_vertically(height)
    };
    let panels = top.split_evenly((1, 2));
    let d = |s: &[Sample]| cdf(s.iter().filter_map(Sample::dispatch).collect());
    let c = |s: &[Sample]| cdf(s.iter().filter_map(Sample::completion).collect());
    cdf_panel(
        &panels[0],
        &format!("{name}: dispatch (create → Job seen)"),
        &d(ours),
        &d(reference),
    )?;
    cdf_panel(
        &panels[1],
        &format!("{name}: completion (Job done → Succeeded seen)"),
        &c(ours),
        &c(reference),
    )?;
    if burst {
        in_flight_panel(
            &bottom,
            &in_flight(ours, 250.0),
            &in_flight(reference, 250.0),
        )?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// File name of a workload's picture.
pub fn picture_name(workload: &str) -> String {
    let slug: String = workload
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("side-by-side-{}.svg", slug.trim_end_matches('-'))
}

/// Replaces the side-by-side section of `docs` (appends it when the markers are missing).
pub fn update_docs(docs: &Path, section: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(docs).with_context(|| format!("reading {}", docs.display()))?;
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{BEGIN}\n\n{section}{END}{}",
            &text[..a],
            &text[b + END.len()..]
        ),
        _ => format!("{text}\n## Side by side with the reference\n\n{BEGIN}\n\n{section}{END}\n"),
    };
    std::fs::write(docs, new)?;
    Ok(())
}

/// `wfe-bench --compare OURS REFERENCE`.
pub fn run(ours_path: &Path, reference_path: &Path, out: &Path, docs: Option<&Path>) -> Result<()> {
    let read = |p: &Path| -> Result<Value> {
        serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a results file", p.display()))
    };
    let (ours, reference) = (read(ours_path)?, read(reference_path)?);
    if reference["reference_commit"].is_null() {
        bail!("{} is not a run of the reference", reference_path.display());
    }
    let dir_of = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    let (od, rd) = (dir_of(ours_path), dir_of(reference_path));
    let pictures_dir = docs
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir_of(out));
    let mut pictures = Vec::new();
    let mut samples = BTreeMap::new();
    for name in workload_names(&ours) {
        let name = name.as_str();
        let load = |d: &Path| {
            std::fs::read_to_string(samples_file(d, name))
                .map(|t| parse_samples(&t))
                .unwrap_or_default()
        };
        let (so, sr) = (load(&od), load(&rd));
        if so.is_empty() || sr.is_empty() {
            continue;
        }
        let file = picture_name(name);
        picture(&pictures_dir.join(&file), name, &so, &sr)
            .with_context(|| format!("drawing {file}"))?;
        pictures.push((name.to_string(), file));
        samples.insert(name.to_string(), (so.len(), sr.len()));
    }
    let goals: Vec<Value> = goals(&ours, &reference)
        .into_iter()
        .map(|g| json!({"goal": g.goal, "measured": g.measured, "met": g.met}))
        .collect();
    let combined = json!({
        "reference_commit": reference["reference_commit"],
        "goals": goals,
        "pictures": pictures.iter().map(|(w, f)| json!({"workload": w, "file": f})).collect::<Vec<_>>(),
        "ours": ours,
        "reference": reference,
    });
    std::fs::write(out, serde_json::to_string_pretty(&combined)? + "\n")?;
    eprintln!("wrote {}", out.display());
    let section = markdown(&ours, &reference, &pictures);
    if let Some(docs) = docs {
        update_docs(docs, &section)?;
        eprintln!("updated {} and its pictures", docs.display());
    }
    println!("\nGoals of issue #20:");
    for g in combined["goals"].as_array().into_iter().flatten() {
        println!(
            "  [{}] {}: {}",
            if g["met"] == true { "met" } else { "NOT met" },
            g["goal"].as_str().unwrap_or(""),
            g["measured"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "# t0_unix_ms=1\nname,create_sent_ms,create_done_ms,job_seen_ms,complete_sent_ms,succeeded_seen_ms,released_seen_ms\n\
        a-00000,0.0,5.0,20.0,1020.0,1040.0,2100.0\n\
        a-00001,1.0,6.0,30.0,1030.0,,\n";

    #[test]
    fn parses_samples_and_latencies() {
        let s = parse_samples(CSV);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].dispatch(), Some(20.0));
        assert_eq!(s[0].completion(), Some(20.0));
        assert_eq!(s[1].completion(), None);
        assert_eq!(s[1].released, None);
    }

    #[test]
    fn cdf_and_in_flight() {
        let c = cdf(vec![3.0, 1.0, 2.0, 4.0]);
        assert_eq!(c.first(), Some(&(1.0, 0.25)));
        assert_eq!(c.last(), Some(&(4.0, 1.0)));
        let s = parse_samples(CSV);
        let f = in_flight(&s, 1000.0);
        // t=0: one created; t=1 s: both; t=2 s: both (the first released at 2.1 s); t=3 s: one.
        assert_eq!(f[0], (0.0, 1.0));
        assert_eq!(f[1], (1.0, 2.0));
        assert_eq!(f[2], (2.0, 2.0));
        assert_eq!(f[3], (3.0, 1.0));
    }

    #[test]
    fn ratios_and_goals() {
        assert_eq!(ratio(1.0, 2.0), "0.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(ratio(0.07, 9200.0), "0.0000x");
        let w = |d: f64, wall: f64, api: f64, rss: f64| {
            json!({"name": "burst-1000", "executions": 1000,
                "dispatch_latency_ms": {"p50": d, "p95": d, "p99": d, "max": d},
                "completion_propagation_ms": {"p50": d, "p95": d, "p99": d, "max": d},
                "wall_s": wall, "api_calls_per_execution": api, "operator_peak_rss_mib": rss,
                "usage": {"cpu_s": {"kube-apiserver": api}}})
        };
        let ours =
            json!({"workloads": [w(10.0, 20.0, 5.0, 20.0)], "scale": {"rss_idle_mib": 10.0}});
        let reference =
            json!({"workloads": [w(40.0, 60.0, 10.0, 90.0)], "scale": {"rss_idle_mib": 60.0}});
        let g = goals(&ours, &reference);
        assert!(g.iter().all(|g| g.met), "{g:?}");
        let worse =
            json!({"workloads": [w(30.0, 50.0, 9.0, 60.0)], "scale": {"rss_idle_mib": 30.0}});
        let g = goals(&worse, &reference);
        assert!(g.iter().all(|g| !g.met), "{g:?}");
    }

    #[test]
    fn draws_a_picture() {
        let dir = std::env::temp_dir().join(format!("wfe-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(picture_name("burst-100"));
        let s = parse_samples(CSV);
        picture(&path, "burst-100", &s, &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("we-operator") && svg.contains("reference"));
        assert_eq!(picture_name("steady-10/s"), "side-by-side-steady-10-s.svg");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn replaces_the_section() {
        let dir = std::env::temp_dir().join(format!("wfe-bench-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.md");
        std::fs::write(&p, format!("head\n{BEGIN}\nold\n{END}\ntail\n")).unwrap();
        update_docs(&p, "new\n").unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains("new\n") && !t.contains("old") && t.ends_with("tail\n"));
        let _ = std::fs::remove_dir_all(dir);
    }
}

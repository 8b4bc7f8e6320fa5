//! `unireward::train::plots` and `unireward plot`: the series read from a hand-built metrics log (NaN, null,
//! missing keys, arrays, nested objects, a cut last line) are exactly the file's; the PNGs decode at the plot size,
//! one per family; bad logs are clear errors that write nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::Rng;
use unireward::train::plots::{
    families, parse_metrics, write_metric_plots, Series, MAX_SERIES, PLOT_HEIGHT, PLOT_WIDTH,
};

/// A temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("unireward-plots-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn log(&self, text: &str) -> PathBuf {
        let path = self.0.join("metrics.jsonl");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pngs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".png"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Points compared bit for bit, so NaN equals NaN.
fn bits(points: &[(f64, f64)]) -> Vec<(u64, u64)> {
    points.iter().map(|(x, y)| (x.to_bits(), if y.is_nan() { f64::NAN.to_bits() } else { y.to_bits() })).collect()
}

fn series<'a>(all: &'a [Series], name: &str) -> &'a Series {
    all.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no series `{name}` in {all:?}"))
}

const LOG: &str = r#"{"step": 1, "loss": 2.5, "lr": 1e-5, "task_loss": [2.0, null], "note": "warm-up", "ok": true}
{"step": 2, "loss": NaN, "lr": 2e-5, "task_loss": [1.5, 3.0], "eval": {"acc": 0.5}}

{"step": 3, "loss": null, "grad_norm": Infinity, "rewards/accuracies": 0.75, "text": "NaN in a string: \" NaN"}
{"loss": 1.25, "eval/loss": -Infinity, "lr": "3e-5"}
{"step": 10, "loss": 1.0, "deep": {"a": {"b": {"c": {"d": {"e": 7}}}}}}
{"step": 11, "loss": 0.5, "lr"#;

#[test]
fn series_are_the_files_values_with_nan_and_missing_keys() {
    let log = parse_metrics(LOG).unwrap();
    assert_eq!(log.records, 5);
    assert!(log.cut_last_line);
    let nan = f64::NAN;
    let expected: &[(&str, &[(f64, f64)])] = &[
        // The record without `step` is the 4th: its x is its position.
        ("loss", &[(1.0, 2.5), (2.0, nan), (3.0, nan), (4.0, 1.25), (10.0, 1.0)]),
        ("lr", &[(1.0, 1e-5), (2.0, 2e-5), (4.0, 3e-5)]),
        ("task_loss/0", &[(1.0, 2.0), (2.0, 1.5)]),
        ("task_loss/1", &[(1.0, nan), (2.0, 3.0)]),
        ("eval/acc", &[(2.0, 0.5)]),
        ("grad_norm", &[(3.0, f64::INFINITY)]),
        ("rewards/accuracies", &[(3.0, 0.75)]),
        ("eval/loss", &[(4.0, f64::NEG_INFINITY)]),
        ("deep/a/b/c/d/e", &[]), // deeper than 4 levels: not a metric, and no series either
    ];
    for (name, points) in expected.iter().filter(|(_, p)| !p.is_empty()) {
        assert_eq!(bits(&series(&log.series, name).points), bits(points), "{name}");
    }
    let mut names: Vec<&str> = log.series.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    let mut wanted: Vec<&str> = expected.iter().filter(|(_, p)| !p.is_empty()).map(|(n, _)| *n).collect();
    wanted.sort();
    assert_eq!(names, wanted, "strings, booleans and too-deep values are not metrics");
    assert_eq!(series(&log.series, "loss").gaps(), 2);
    assert_eq!(series(&log.series, "grad_norm").gaps(), 1);
}

#[test]
fn a_resumed_runs_repeated_steps_keep_their_last_value() {
    // Killed after logging step 3 with its checkpoint at step 1; resumed from there.
    let text = "{\"step\": 1, \"loss\": 4}\n{\"step\": 2, \"loss\": 3}\n{\"step\": 3, \"loss\": 2}\n\
                {\"step\": 2, \"loss\": 3.5}\n{\"step\": 3, \"loss\": null}\n{\"step\": 4, \"loss\": 1}\n";
    let log = parse_metrics(text).unwrap();
    assert_eq!(log.records, 6);
    assert_eq!(bits(&log.series[0].points), bits(&[(1.0, 4.0), (2.0, 3.5), (3.0, f64::NAN), (4.0, 1.0)]));
}

#[test]
fn random_logs_round_trip() {
    let mut rng = rand::thread_rng();
    let keys = ["loss", "lr", "grad_norm", "rewards/margins", "eval/loss", "logps/chosen"];
    let mut expected: Vec<(String, Vec<(f64, f64)>)> = keys.iter().map(|k| (k.to_string(), Vec::new())).collect();
    let mut text = String::new();
    for step in 1..=rng.gen_range(1..200) {
        let mut record = serde_json::Map::new();
        record.insert("step".into(), step.into());
        for (key, points) in &mut expected {
            match rng.gen_range(0..10) {
                0 => {} // missing here
                1 => {
                    record.insert(key.clone(), serde_json::Value::Null);
                    points.push((step as f64, f64::NAN));
                }
                _ => {
                    let v: f64 = rng.gen_range(-1e3..1e3);
                    record.insert(key.clone(), v.into());
                    points.push((step as f64, v));
                }
            }
        }
        text += &format!("{}\n", serde_json::Value::Object(record));
    }
    let log = parse_metrics(&text).unwrap();
    for (name, points) in expected.iter().filter(|(_, p)| !p.is_empty()) {
        assert_eq!(bits(&series(&log.series, name).points), bits(points), "{name}");
    }
    assert_eq!(log.series.len(), expected.iter().filter(|(_, p)| !p.is_empty()).count());
}

#[test]
fn families_put_losses_together_and_split_by_prefix() {
    let log = parse_metrics(LOG).unwrap();
    let grouped: Vec<(String, Vec<&str>)> =
        families(&log).into_iter().map(|(f, m)| (f, m.iter().map(|s| s.name.as_str()).collect())).collect();
    let find = |family: &str| grouped.iter().find(|(f, _)| f == family).map(|(_, m)| m.clone());
    assert_eq!(grouped[0].0, "loss");
    let mut losses = find("loss").unwrap();
    losses.sort();
    assert_eq!(losses, ["eval/loss", "loss", "task_loss/0", "task_loss/1"]);
    assert_eq!(find("rewards").unwrap(), ["rewards/accuracies"]);
    assert_eq!(find("acc").unwrap(), ["eval/acc"]);
    assert_eq!(find("lr").unwrap(), ["lr"]);
}

#[test]
fn pngs_decode_at_the_plot_size_one_per_family() {
    let scratch = Scratch::new("pngs");
    let report = write_metric_plots(&scratch.log(LOG), &scratch.0).unwrap();
    assert_eq!(scratch.pngs(), ["acc.png", "grad_norm.png", "loss.png", "lr.png", "rewards.png"]);
    assert_eq!(report.files.len(), 5);
    let mut gaps = report.gaps();
    gaps.sort();
    assert_eq!(gaps, [("eval/loss", 1), ("grad_norm", 1), ("loss", 2), ("task_loss/1", 1)]);
    for file in &report.files {
        let image = image::open(file).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), (PLOT_WIDTH, PLOT_HEIGHT), "{}", file.display());
        // Text, axes and lines: far from a blank canvas; the first series' colour (tab10 blue) is drawn.
        let inked = image.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(inked > 2_000, "{}: {inked} pixels drawn", file.display());
        assert!(image.pixels().any(|p| p.0 == [31, 119, 180]), "{}: no line", file.display());
    }
    // A second run replaces the plots and leaves no temporary file.
    write_metric_plots(&scratch.log(LOG), &scratch.0).unwrap();
    assert_eq!(scratch.pngs().len(), 5);
}

#[test]
fn a_series_with_no_finite_value_still_gets_its_plot() {
    let scratch = Scratch::new("all-nan");
    let report =
        write_metric_plots(&scratch.log("{\"step\": 1, \"loss\": null}\n{\"step\": 2, \"loss\": NaN}\n"), &scratch.0);
    assert_eq!(report.unwrap().gaps(), [("loss", 2)]);
    assert_eq!(scratch.pngs(), ["loss.png"]);
}

fn error_of(scratch: &Scratch, text: &str) -> String {
    let err = write_metric_plots(&scratch.log(text), &scratch.0).expect_err(text).to_string();
    assert!(scratch.pngs().is_empty(), "{text}: wrote {:?}", scratch.pngs());
    err
}

#[test]
fn bad_logs_are_clear_errors_and_write_nothing() {
    let scratch = Scratch::new("bad");
    let cases = [
        ("{\"step\": 1, \"loss\": 1}\n{oops\n{\"step\": 2}\n", "line 2: not JSON"),
        ("{\"step\": 1, \"loss\": 1}\n[1, 2]\n", "line 2: a metrics record is a JSON object"),
        ("", "no metrics records"),
        ("\n  \n", "no metrics records"),
        ("{\"step\": 1, \"note\": \"hi\"}\n", "no numeric metrics"),
        ("{\"step\": 1, \"loss\": 1e308}\n{\"step\": 2, \"loss\": -1e308}\n", "span more than a float can plot"),
    ];
    for (text, message) in cases {
        let err = error_of(&scratch, text);
        assert!(err.contains(message) && err.contains("metrics.jsonl"), "{text:?}: {err}");
    }
    let many: serde_json::Map<_, _> = (0..=MAX_SERIES).map(|i| (format!("k{i}"), 1.into())).collect();
    let err = error_of(&scratch, &format!("{}\n", serde_json::Value::Object(many)));
    assert!(err.contains(&format!("more than {MAX_SERIES} metric keys")), "{err}");
    let err = write_metric_plots(&scratch.0.join("absent.jsonl"), &scratch.0).unwrap_err().to_string();
    assert!(err.contains("absent.jsonl"), "{err}");
    let err = write_metric_plots(&scratch.0, &scratch.0).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

fn plot_command(metrics: &Path, out: &Path) -> std::process::Output {
    let exe = env!("CARGO_BIN_EXE_unireward");
    Command::new(exe).args(["plot", "--metrics"]).arg(metrics).arg("--out").arg(out).output().unwrap()
}

#[test]
fn the_plot_command_writes_and_reports() {
    let scratch = Scratch::new("cli");
    let out = scratch.0.join("plots");
    let output = plot_command(&scratch.log(LOG), &out);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("loss.png") && stdout.lines().count() == 5, "{stdout}");
    assert!(stderr.contains("loss: 2 NaN or null values") && stderr.contains("last line is incomplete"), "{stderr}");
    let output = plot_command(&scratch.log("{\"step\": 1}\nnot json\n"), &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.lines().count() == 1 && stderr.contains("line 2"), "{stderr}");
}

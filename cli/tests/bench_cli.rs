//! `gundb bench` end to end, on small sizes: the scenarios asked for run, every row has its
//! same-run baseline and a ratio, the JSON and Markdown reports are written, notes kept
//! below the marker of an existing Markdown report survive regeneration, and the streams
//! scenario's child processes report back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn bench_writes_rows_with_baselines_and_keeps_notes_below_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let (json, markdown) = (dir.path().join("report.json"), dir.path().join("BENCH.md"));
    let marker = "<!-- Generated above by `gundb bench --markdown`; kept below when regenerated. -->";
    std::fs::write(&markdown, format!("old table\n{marker}\n## Notes by hand\nkeep me\n")).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_gundb"))
        .args(["bench", "--only", "codec,router", "--events", "2000", "--json"])
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .expect("gundb bench runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let scenarios: Vec<&str> = rows.iter().map(|row| row["scenario"].as_str().unwrap()).collect();
    assert!(scenarios.contains(&"codec") && scenarios.contains(&"router"), "{scenarios:?}");
    assert!(!scenarios.contains(&"durable emit"), "only what was asked for runs");
    assert_eq!(rows.len(), 5, "codec, two arrival orders alone and two through the actor");
    for row in rows {
        assert!(row["value"].as_f64().unwrap() > 0.0, "{row}");
        let baseline = row["baseline"]["value"].as_f64().unwrap();
        let ratio = row["ratio"].as_f64().unwrap();
        assert!((ratio - row["value"].as_f64().unwrap() / baseline).abs() < 1e-9, "{row}");
    }
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);

    let written = std::fs::read_to_string(&markdown).unwrap();
    assert!(written.starts_with("# gundb bench"), "{written}");
    assert!(written.contains("| codec | encode an event"), "{written}");
    assert!(!written.contains("old table"), "the generated part is replaced");
    assert!(written.ends_with(&format!("{marker}\n## Notes by hand\nkeep me\n")), "{written}");
}

#[test]
fn bench_refuses_an_unknown_scenario_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_gundb")).args(["bench", "--only", "warp"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no scenario \"warp\"") && stderr.contains("emit, codec"), "{stderr}");
    assert!(stderr.contains("memory, streams"), "every scenario is listed: {stderr}");
}

// The streams scenario on two small stream counts: each runs in its child process, whose
// report comes back as seven rows per count, none of them with a target (those are for 10⁶).
#[test]
fn bench_streams_reports_seven_rows_per_stream_count() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_gundb"))
        .args(["bench", "--only", "streams", "--streams", "50,100", "--json"])
        .arg(&json)
        .output()
        .expect("gundb bench runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 14, "{rows:?}");
    for row in rows {
        assert_eq!(row["scenario"], "streams", "{row}");
        assert!(row["value"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["target"].is_null(), "no target below 10⁶ streams: {row}");
    }
    assert!(rows[0]["measure"].as_str().unwrap().starts_with("50 fresh streams"), "{}", rows[0]);
    assert!(rows[6]["measure"].as_str().unwrap().starts_with("a fresh site catching up on 50"), "{}", rows[6]);
    assert!(rows[7]["measure"].as_str().unwrap().starts_with("100 fresh streams"), "{}", rows[7]);
    assert!(rows[0]["baseline"]["value"].as_f64().unwrap() > 0.0, "the one-stream rate: {}", rows[0]);
}

//! The README's main job: `gundb demo` (three sites, a partition, a heal) must end with
//! every view equal. Its links delay and duplicate frames, so it also exercises
//! replication's recovery from reordered `Want`s (an old one overtaking a newer one once
//! stalled a link for good in about one run in 15).
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_converges() {
    // The demo's own seed is fixed; thread timing varies between runs, so a few runs.
    for run in 0..3 {
        let output = Command::new(env!("CARGO_BIN_EXE_gundb")).arg("demo").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("verdict: CONVERGED"),
            "run {run}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

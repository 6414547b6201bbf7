//! The load generator's command line, run as a user runs it: it explains itself, and refuses
//! combinations it cannot honour before touching any broker. (Also what makes `cargo test
//! --workspace` build the binary the broker's own tests drive, tests/metrics.rs among them.)

use std::process::Command;

const LOADGEN: &str = env!("CARGO_BIN_EXE_spate-loadgen");

#[test]
fn it_explains_its_options() {
    let help = Command::new(LOADGEN).arg("--help").output().expect("run spate-loadgen");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in ["--protocol", "--acks", "--records", "--group", "--json"] {
        assert!(text.contains(option), "--help does not mention {option}:\n{text}");
    }
}

#[test]
fn contradictory_options_are_refused_before_connecting() {
    // Port 9 (discard) is never dialled: the arguments are refused first.
    let refused = Command::new(LOADGEN)
        .args(["-b", "127.0.0.1:9", "--protocol", "kafka", "--group", "readers"])
        .output()
        .expect("run spate-loadgen");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("--group consumes through the native protocol"), "{why}");
}

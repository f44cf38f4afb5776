//! The short soak: 15 s at 100 events/s against a receiver that fails 30 % of requests,
//! times out 5 % and resets 5 % of connections. Every event must land and the backlog
//! drain. (`waas soak` with its defaults runs the 10-minute version.) It runs the built
//! binary, as an operator would.

#[test]
fn every_event_lands_through_a_hostile_receiver() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waas"))
        .args([
            "soak",
            "--seconds",
            "15",
            "--rate",
            "100",
            "--drain-seconds",
            "90",
        ])
        .env_remove("WAAS_CONFIG")
        .output()
        .expect("waas soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the soak must deliver everything:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("waas soak: 1500 events"), "{stdout}");
}

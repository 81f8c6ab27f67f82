//! Configuration precedence of the real binary: defaults, then the config file, then the
//! environment, then flags. `twtr migrate` on the embedded store logs its data directory and
//! exits, which makes the effective value visible.

use std::process::Command;

fn migrate_data_dir(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_twtr"));
    command
        .arg("migrate")
        .args(args)
        .env("TWTR_LOG_FORMAT", "json")
        .env_remove("TWTR_DATA_DIR")
        .env_remove("TWTR_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run twtr migrate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|event| event["data_dir"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no data_dir logged in {stdout}"))
}

#[test]
fn flags_beat_environment_beats_config_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twtr.env");
    std::fs::write(&file, "# comments are fine\nTWTR_DATA_DIR=/from/file\n").unwrap();
    let file = file.to_str().unwrap();

    assert_eq!(migrate_data_dir(&[], &[]), "./data");
    assert_eq!(migrate_data_dir(&["--config", file], &[]), "/from/file");
    assert_eq!(
        migrate_data_dir(&[], &[("TWTR_CONFIG", file)]),
        "/from/file"
    );
    let env = [("TWTR_DATA_DIR", "/from/env")];
    assert_eq!(migrate_data_dir(&["--config", file], &env), "/from/env");
    let flags = ["--config", file, "--data-dir", "/from/flag"];
    assert_eq!(migrate_data_dir(&flags, &env), "/from/flag");
}

#[test]
fn a_missing_config_file_is_an_error_that_names_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .args(["migrate", "--config", "/no/such/twtr.env"])
        .output()
        .expect("run twtr");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/no/such/twtr.env"), "{stderr}");
}

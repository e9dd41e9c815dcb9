//! The `iothub-sim` binary's argument checks and its behaviour when the hub is not there: bad
//! input is refused with a message naming what is wrong (exit 2 for arguments clap checks,
//! 1 for values checked after parsing), and an unreachable endpoint is counted as failed
//! messages with exit status 1, never a panic. The simulator-driven end-to-end tests against a
//! real hub are `tests/tests/networks_sim.rs` and `tests/tests/fleet_sim.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::Command;

fn sim(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-sim"))
        .args(args)
        .env_remove("IOTHUB_API_KEY")
        .env_remove("IOTHUB_NETWORK_SECRET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A URL on a port nothing listens on (bound then released).
fn dead_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/networks/00000000-0000-4000-8000-000000000000")
}

#[test]
fn bad_arguments_are_refused_naming_what_is_wrong() {
    let url = dead_url();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["fleet", "--token", "k", "--transports", "tcp,udp"],
            2,
            "udp",
        ),
        (&["fleet", "--token", "k", "--qos", "2"], 2, "--qos"),
        (
            &[
                "lorawan",
                "--url",
                &url,
                "--secret",
                "s",
                "--device",
                "zz:260b1f2a:00:00",
            ],
            2,
            "dev_eui",
        ),
        (
            &[
                "lorawan", "--url", &url, "--secret", "s", "--device", "a1b2",
            ],
            2,
            "DEV_EUI:DEV_ADDR",
        ),
        (
            &["lorawan", "--url", &url, "--secret", "s", "--mode", "lora"],
            2,
            "phy, phy-json, chirpstack or tts",
        ),
        (
            &["lorawan", "--url", &url, "--secret", "s", "--events", "up"],
            2,
            "--events",
        ),
        (
            &["lorawan", "--url", &url, "--secret", "s", "--register"],
            1,
            "--register needs --token",
        ),
        (
            &[
                "lorawan",
                "--url",
                &url,
                "--secret",
                "s",
                "--payload-hex",
                "abc",
            ],
            1,
            "odd number of hex digits",
        ),
        (
            &[
                "sigfox", "--url", &url, "--secret", "s", "--device", "NOTHEX",
            ],
            1,
            "1 to 8 hex digits",
        ),
        (
            &["lorawan", "--url", &url, "--secret", "s", "--f-port", "0"],
            1,
            "MAC commands",
        ),
        (&["rest", "--url", &url], 2, "--secret"),
        (
            &["rest", "--url", &url, "--secret", "s", "--timeout=-1"],
            1,
            "--timeout",
        ),
    ];
    for (args, code, needle) in cases {
        let (got, _, stderr) = sim(args);
        assert_eq!(got, Some(*code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
}

/// Nothing listens: every message fails (no answer), the run exits 1, and the JSON summary
/// says so.
#[test]
fn an_unreachable_network_counts_failed_messages() {
    let url = dead_url();
    for sub in ["rest", "sigfox", "lorawan"] {
        let (code, stdout, stderr) = sim(&[
            sub,
            "--url",
            &url,
            "--secret",
            "s",
            "--messages",
            "2",
            "--json",
            "--quiet",
        ]);
        assert_eq!(code, Some(1), "{sub}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let total = &report["total"];
        assert_eq!(total["accepted"], 0, "{sub}: {report}");
        assert!(total["failed"].as_u64().unwrap() >= 2, "{sub}: {report}");
        assert_eq!(total["sent"], total["failed"], "{sub}: {report}");
    }
}

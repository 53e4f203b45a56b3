//! The real-socket subcommands end to end: `serve` (bound address, SIGTERM), `run --transport
//! ws`, `load --format json`, and bad input. Loopback only; every wait has a timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use util::{WAIT, context, run_bounded as run, spawn_serve, wait_output};

mod util;

/// Starts `racegate serve` and reads its `listening on ws://ADDR` line.
fn serve(args: &[&str]) -> (Child, String) {
    spawn_serve(args, Stdio::piped())
}

/// A raw upgrade; returns the response's status line.
fn upgrade(addr: &str, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (s, status)
}

#[test]
fn serve_prints_its_address_serves_and_stops_cleanly_on_sigterm() {
    let (child, addr) = serve(&["--endpoint", "state-machine", "--grace-ms", "100"]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (conn, status) = upgrade(&addr, "/any/path?token=u1");
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_output(child);
    let args = ["serve", "--endpoint", "state-machine"];
    assert_eq!(out.status.code(), Some(0), "{}", context(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SIGTERM: shutting down with 1 connections open"),
        "{stderr}"
    );
    assert!(stderr.contains("0 left at exit"), "{stderr}");
    drop(conn);
}

#[test]
fn serve_refuses_bad_input_with_exit_2() {
    for (args, says) in [
        (
            &["serve", "--endpoint", "fixed"][..],
            "unknown endpoint `fixed`",
        ),
        (
            &["serve", "--endpoint", "unfixed", "--addr", "nowhere"][..],
            "invalid socket address",
        ),
        (
            &[
                "serve",
                "--endpoint",
                "unfixed",
                "--scenario",
                "no/such.toml",
            ][..],
            "no/such.toml",
        ),
        (
            &["load", "--endpoint", "unfixed", "--users", "0"][..],
            "--users must be at least 1",
        ),
        (
            &["load", "--endpoint", "unfixed", "--repeat", "0"][..],
            "--repeat must be between 1 and 100",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{}", context(args, &out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            context(args, &out)
        );
    }
}

#[test]
fn serve_refuses_an_address_in_use_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = ["serve", "--endpoint", "unfixed", "--addr", &addr];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", context(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not listen on"), "{stderr}");
    // The OS's reason, once: the error chain must not repeat it.
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn run_over_real_sockets_exits_0_on_a_bundled_scenario() {
    let args = [
        "run",
        "--transport",
        "ws",
        "scenarios/partial-passes-fast-setup.toml",
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", context(&args, &out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 mismatches"));
    // JSON says which clock a run's milliseconds are on.
    let json: Vec<&str> = args.iter().copied().chain(["--format", "json"]).collect();
    let out = run(&json);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &doc["scenarios"][0]["results"][0];
    assert_eq!(first["clock"], "real", "{first}");
    assert_eq!(first["elapsed_ms"], first["simulated_ms"], "{first}");
    let virt = run(&[
        "run",
        "scenarios/partial-passes-fast-setup.toml",
        "--format",
        "json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&virt.stdout).unwrap();
    let first = &doc["scenarios"][0]["results"][0];
    assert_eq!(first["clock"], "virtual", "{first}");
    assert!(first.get("elapsed_ms").is_none(), "{first}");
}

#[test]
fn load_prints_one_json_object_and_exit_code_follows_the_counts() {
    let args = [
        "load",
        "--endpoint",
        "state-machine",
        "--users",
        "20",
        "--window-ms",
        "20",
        "--messages",
        "3",
        "--format",
        "json",
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", context(&args, &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "cross_user",
        "msgs_per_s",
        "baseline_msgs_per_s",
        "ratio",
        "p50_ready_ms",
        "p99_ready_ms",
        "peak_rss_kb",
    ] {
        assert!(v.get(key).is_some_and(|x| !x.is_null()), "{key}: {v}");
    }
    assert_eq!(v["lost"], 0);
    // Three runs by default; the report is the median one and lists each run's ratio.
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{v}");
    assert!(runs.iter().any(|r| r == &v["ratio"]), "{v}");

    let unfixed = [
        "load",
        "--endpoint",
        "unfixed",
        "--users",
        "20",
        "--window-ms",
        "20",
        "--messages",
        "3",
        "--quiet-ms",
        "500",
        "--no-baseline",
    ];
    let out = run(&unfixed);
    assert_eq!(out.status.code(), Some(1), "{}", context(&unfixed, &out));
}

#[test]
fn load_that_cannot_fit_the_open_file_limit_says_so_with_exit_2() {
    // A hard limit of 64 descriptors cannot hold 100 users' 200 sockets: the load must refuse
    // up front, not count refused connects as lost chats.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" load --endpoint state-machine --users 100 --repeat 1"#)
        .arg(env!("CARGO_BIN_EXE_racegate"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    let args = ["load", "--users", "100", "(ulimit -n 64)"];
    assert_eq!(out.status.code(), Some(2), "{}", context(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("100 users need 264 open files"),
        "{}",
        context(&args, &out)
    );
}

#[test]
fn serve_with_json_logs_writes_only_json_to_stderr() {
    let (child, addr) = serve(&["--endpoint", "state-machine", "--log-format", "json"]);
    let (conn, status) = upgrade(&addr, "/ws?token=u1");
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_output(child);
    let args = ["serve", "--log-format", "json"];
    assert_eq!(out.status.code(), Some(0), "{}", context(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        messages.push(entry["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("SIGTERM: shutting down")),
        "{stderr}"
    );
    assert!(
        messages.iter().any(|m| m.contains("0 left at exit")),
        "{stderr}"
    );
    drop(conn);
}

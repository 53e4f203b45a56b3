//! The wire format as an independent client sees it: Python's `websockets` library (pinned in
//! `python/requirements.txt`, installed into target/py by `make py`) talks to the fixed endpoint;
//! `py/wire_client.py` holds the checks.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{TestServer, WAIT, panics, python};

#[tokio::test]
async fn python_websockets_client_speaks_the_wire_protocol() {
    let python = python();
    let server = TestServer::fix().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/wire_client.py");
    let child = tokio::process::Command::new(&python)
        .arg(script)
        .arg(format!("ws://{}", server.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (`make py` creates target/py)",
                python.display()
            )
        });
    let out = tokio::time::timeout(WAIT + Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the Python client finishes within its time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed ({}) under {}; if a package is missing, `make py` installs \
         python/requirements.txt\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status,
        python.display()
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        3,
        "{stdout}"
    );
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

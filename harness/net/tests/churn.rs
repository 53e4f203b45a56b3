//! Rapid connect/disconnect churn: thousands of cycles, half of them abrupt. The server keeps
//! serving a bystander throughout, holds no connection afterwards, and once the allocator is warm
//! further rounds leave its memory where it was: nothing accumulates per connection.
//!
//! Its own test binary, one test at a time, because it reads the process's resident set.

mod support;

use racegate_replay::EndpointKind;
use support::{TestServer, chat_round_trip, connect, panics, raw_upgrade, test_options};

const WORKERS: usize = 8;
const CYCLES: usize = 250; // per worker and round: 2000 connections a round

async fn round(server: &TestServer, round: usize) {
    let mut bystander = connect(&server.url("bystander")).await;
    chat_round_trip(&mut bystander, "bystander", &format!("bystander/r{round}a")).await;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let addr = server.addr;
        workers.push(tokio::spawn(async move {
            for i in 0..CYCLES {
                let target = format!("/c?token=churn-{round}-{w}-{i}");
                if i % 2 == 0 {
                    let mut ws = connect(&format!("ws://{addr}{target}")).await;
                    let _ = ws.close(None).await;
                } else {
                    // Upgrade, then vanish without a close frame.
                    let (raw, head) = raw_upgrade(addr, &target).await;
                    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                    drop(raw);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    // Still served after all of that.
    chat_round_trip(&mut bystander, "bystander", &format!("bystander/r{round}b")).await;
    drop(bystander);
    server.settles_to(0).await;
}

async fn churn_leaves_nothing_behind(endpoint: EndpointKind) {
    let server = TestServer::start(test_options(endpoint)).await;
    // Two rounds grow the allocator's pools to what a round needs; two more must fit in them.
    round(&server, 1).await;
    round(&server, 2).await;
    let warm = racegate_net::load::rss_kb();
    round(&server, 3).await;
    round(&server, 4).await;
    let after = racegate_net::load::rss_kb();
    assert!(
        after <= warm + 1024,
        "{endpoint}: RSS grew from {warm} KiB to {after} KiB over {} more connections",
        2 * WORKERS * CYCLES
    );
    assert!(server.counters.accepted() >= (4 * WORKERS * CYCLES) as u64);
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn rapid_connect_disconnect_churn_leaves_nothing_behind_unfixed() {
    churn_leaves_nothing_behind(EndpointKind::Unfixed).await;
}

/// Regression: the state machine's sink used to keep each finished connection's writer and
/// handler tasks alive (its channels were never dropped), about 12 KB per connection.
#[tokio::test]
async fn rapid_connect_disconnect_churn_leaves_nothing_behind_state_machine() {
    churn_leaves_nothing_behind(EndpointKind::StateMachine).await;
}

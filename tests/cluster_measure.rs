//! Figures for docs/cluster.md, against a real `nats-server -js`; ignored in the normal
//! run (they take a while and only mean something in a release build):
//!
//! ```sh
//! cargo test --release --test cluster_measure -- --ignored --nocapture
//! ```
//!
//! `ECHOCHAT_MEASURE_MESSAGES` sets how many messages the big history holds (default
//! 200000).

mod nats_support;

use std::time::{Duration, Instant};

use echochat::server::cluster::{
    Cluster, ClusterConfig, ClusterEvent, HistoryOf, Joined, Outgoing, Scope, StoredBody,
};
use futures_util::StreamExt;
use nats_support::NatsServer;

fn message(room: &str, i: usize) -> Outgoing {
    Outgoing {
        scope: Scope::Room(room.to_string()),
        body: StoredBody {
            room: Some(room.to_string()),
            to: None,
            from: format!("user{}", i % 1000),
            text: format!("message number {i}, about as long as a chat line usually is"),
            ts: 1_700_000_000_000 + i as u64,
        },
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!(
        "p50 {:?}, p90 {:?}, p99 {:?}, max {:?} ({} samples)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

async fn fill(node: &Cluster, count: usize, rooms: usize) {
    let started = Instant::now();
    futures_util::stream::iter(0..count)
        .map(|i| {
            let node = node.clone();
            async move {
                node.publish(&message(&format!("room{}", i % rooms), i))
                    .await
                    .expect("published")
            }
        })
        .buffer_unordered(256)
        .for_each(|_| async {})
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {count} messages over {rooms} rooms in {secs:.1} s ({:.0}/s, 256 in flight)",
        count as f64 / secs
    );
}

/// Pages of 50 back from deep in `room`'s history, on a node that caches nothing (so
/// every message is a direct get).
async fn page_cost(node: &Cluster, room: &str) -> String {
    let of = HistoryOf::Room(room.to_string());
    let newest = node.history(&of, None, 1).await.unwrap();
    let top = newest.first().map_or(1, |m| m.id);
    let mut samples = Vec::new();
    for step in 1..=40u64 {
        let before = top - (top * step / 41);
        let started = Instant::now();
        let page = node.history(&of, Some(before), 50).await.unwrap();
        samples.push(started.elapsed());
        assert!(page.iter().all(|m| m.id < before));
    }
    percentiles(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurements: run in release with --ignored --nocapture"]
async fn measure_latency_index_and_paging() {
    let total: usize = std::env::var("ECHOCHAT_MEASURE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let nats = NatsServer::start();
    let config = ClusterConfig::new(&nats.url(), "measure");
    let Joined { cluster: a, .. } = Cluster::connect(config.clone()).await.unwrap();
    let Joined {
        cluster: b,
        events: mut b_events,
        ..
    } = Cluster::connect(config.clone()).await.unwrap();

    // Publish to acknowledgement, one at a time; and to delivery on another node.
    let mut to_ack = Vec::new();
    let mut to_other_node = Vec::new();
    for i in 0..2000 {
        let started = Instant::now();
        let id = a.publish(&message("lobby", i)).await.unwrap();
        to_ack.push(started.elapsed());
        loop {
            match b_events.recv().await {
                Some(ClusterEvent::Message(m)) if m.message.id == id => break,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
        to_other_node.push(started.elapsed());
    }
    println!("publish → ack: {}", percentiles(to_ack));
    println!(
        "publish → delivered on another node: {}",
        percentiles(to_other_node)
    );
    drop(b_events);
    b.close().await;

    // A small history first, then a big one: the page should cost the same.
    let no_cache = ClusterConfig {
        cache: 0,
        ..config.clone()
    };
    let small = Cluster::connect(no_cache.clone()).await.unwrap().cluster;
    println!(
        "page of 50, {} messages in the stream, nothing cached: {}",
        small.last_message_id(),
        page_cost(&small, "lobby").await
    );
    small.close().await;

    fill(&a, total, 100).await;
    let started = Instant::now();
    let big = Cluster::connect(no_cache).await.unwrap().cluster;
    let (count, last) = big.indexed();
    println!(
        "a node joining reads and indexes {count} messages (last id {last}) in {:?}",
        started.elapsed()
    );
    println!(
        "page of 50, {count} messages in the stream, nothing cached: {}",
        page_cost(&big, "room7").await
    );
    println!(
        "page of 50 from the in-memory cache (the newest 8192): {}",
        {
            let of = HistoryOf::Room("room7".into());
            let mut samples = Vec::new();
            for _ in 0..40 {
                let started = Instant::now();
                a.history(&of, None, 50).await.unwrap();
                samples.push(started.elapsed());
            }
            percentiles(samples)
        }
    );
    big.close().await;
    a.close().await;
}

//! Joining the cluster: the connection to NATS, the stream and buckets (created when
//! missing), the start-up read into the index and the snapshot, and the followers.

use super::*;

impl Cluster {
    /// Connects to NATS, creates the stream and buckets of `config.name` if they are
    /// missing (or binds to them), reads the message stream into this node's index and
    /// every bucket into the [`Snapshot`], and starts following. Must run inside a
    /// tokio runtime: the followers are spawned there and run until
    /// [`close`](Self::close). Fails at once, with one line, when NATS cannot be
    /// reached.
    pub async fn connect(config: ClusterConfig) -> Result<Joined, ConnectError> {
        let layout = Layout::new(&config.name)?;
        let url = text::quote(&config.url);
        let (available_tx, available) = watch::channel(false);
        let available_tx = Arc::new(available_tx);
        let events_tx = Arc::clone(&available_tx);
        let client = async_nats::ConnectOptions::new()
            .name(format!("echochat {}", config.label))
            .connection_timeout(config.op_timeout)
            .request_timeout(Some(config.op_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100u64 << attempts.min(4)).min(1000))
            })
            .event_callback(move |event| {
                let tx = Arc::clone(&events_tx);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tx.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            tx.send_replace(false);
                        }
                        _ => {}
                    }
                }
            })
            .connect(servers(&config.url))
            .await
            .map_err(|err| ConnectError::Unreachable {
                url: url.clone(),
                reason: err.to_string(),
            })?;
        available_tx.send_replace(true);

        let js = jetstream::ContextBuilder::new()
            .timeout(config.op_timeout)
            .build(client.clone());
        let setup = |what: String, reason: String| ConnectError::Setup {
            url: url.clone(),
            what,
            reason,
        };
        let stream_config = stream::Config {
            name: layout.message_stream(),
            subjects: vec![layout.message_subjects()],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            allow_direct: true,
            description: Some("echochat: every chat message; sequence = id".into()),
            ..Default::default()
        };
        let messages = js
            .get_or_create_stream(stream_config)
            .await
            .map_err(|e| setup(format!("stream {}", layout.message_stream()), e.to_string()))?;
        let mut buckets = HashMap::new();
        for bucket in Bucket::ALL {
            let store = open_bucket(&js, &layout, bucket, &config)
                .await
                .map_err(|e| setup(format!("bucket {}", layout.bucket(bucket)), e))?;
            buckets.insert(bucket, store);
        }

        let node = records::new_uid()[..16].to_string();
        let board = PresenceBoard::new(&node, &config.label, unix_ms(), config.node_timeout);
        let inner = Arc::new(Inner {
            index: Mutex::new(MessageIndex::new(config.cache)),
            presence: Mutex::new(board),
            layout,
            config,
            node,
            client,
            js,
            messages,
            buckets,
            beat_now: Notify::new(),
            available,
            stop: CancellationToken::new(),
            expected: Mutex::new((0, None)),
        });
        let (events, receiver) = mpsc::channel(4096);

        let last_id = last_present(inner.messages.cached_info());
        let (indexed, index_ready) = oneshot::channel::<Recent>();
        tokio::spawn(follow::messages(
            Arc::clone(&inner),
            last_id,
            indexed,
            events.clone(),
        ));
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let mut targets = HashMap::new();
        for bucket in follow::FOLLOWED {
            if let Some(store) = inner.buckets.get(&bucket) {
                targets.insert(bucket, last_present(store.stream.cached_info()));
            }
        }
        tokio::spawn(follow::state(
            Arc::clone(&inner),
            targets,
            snapshot_tx,
            events,
        ));
        tokio::spawn(follow::heartbeat(Arc::clone(&inner)));
        tokio::spawn(follow::probe_messages(Arc::clone(&inner)));
        let lost = |what: &str| ConnectError::Unreachable {
            url: url.clone(),
            reason: format!("lost while reading {what}"),
        };
        let recent = index_ready.await.map_err(|_| lost("the message stream"))?;
        let mut snapshot = snapshot_rx.await.map_err(|_| lost("the buckets"))?;
        snapshot.last_message_id = lock(&inner.index).last();
        snapshot.recent = recent;
        Ok(Joined {
            cluster: Cluster { inner },
            snapshot,
            events: receiver,
        })
    }
}

/// The sequence of the last message a stream holds (0 when it holds none: after a
/// purge the last sequence given stays, with no message left to read up to).
fn last_present(info: &stream::Info) -> u64 {
    if info.state.messages == 0 {
        0
    } else {
        info.state.last_sequence
    }
}

/// The servers of a `--nats` value: comma-separated URLs (blanks around them and empty
/// entries are ignored).
fn servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Creates `bucket` (history 1; presence entries expire) or binds to it if another
/// node did.
async fn open_bucket(
    js: &jetstream::Context,
    layout: &Layout,
    bucket: Bucket,
    config: &ClusterConfig,
) -> Result<kv::Store, String> {
    let name = layout.bucket(bucket);
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    let max_age = match bucket {
        // Entries of a dead node vanish by themselves; nodes judge sooner.
        Bucket::Presence => config.node_timeout + Duration::from_secs(10),
        // An expired token goes by itself (a minute after it expires).
        Bucket::Tokens => config
            .token_ttl
            .map_or(Duration::ZERO, |ttl| ttl + Duration::from_secs(60)),
        _ => Duration::ZERO,
    };
    // The stream a key-value bucket is, written out rather than through
    // `create_key_value`, whose account query expects fields NATS 2.9 does not send.
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            description: Some(format!("echochat {}", bucket.suffix())),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Bound through `get_key_value` either way: another node may have created it in
    // between.
    let outcome = created.map(|_| ()).map_err(|e| e.to_string());
    js.get_key_value(&name)
        .await
        .map_err(|err| outcome.err().unwrap_or_else(|| err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::servers;

    #[test]
    fn nats_takes_several_comma_separated_servers() {
        assert_eq!(servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            servers(" nats://a:4222, nats://b:4222,,nats://c:4222 "),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
    }
}

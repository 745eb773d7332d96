//! The analytics publisher against a real NATS server with JetStream.

use async_nats::jetstream::{self, stream};
use fechatter_protos::sample_events;
use fechatter_protos::v1::AnalyticsEvent;
use fechatter_server::analytics::{AnalyticsPublisher, PublishError, PublisherSettings};
use prost::Message as _;
use std::time::Duration;
use test_support::NatsServer;

async fn analytics_stream(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "ANALYTICS".into(),
        subjects: vec!["fechatter.analytics.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream")
}

#[tokio::test]
async fn every_kind_is_published_on_its_subject_with_its_id_as_message_id() {
    let nats = NatsServer::start().await.expect("nats");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = analytics_stream(&js).await;
    let publisher = AnalyticsPublisher::new(client, PublisherSettings::default());

    let events = sample_events();
    let results = publisher.publish_all(&events).await;
    assert!(
        results.iter().all(|r| r.as_ref().is_ok_and(|o| !o.duplicate)),
        "{results:?}"
    );

    for (seq, event) in (1u64..).zip(&events) {
        let stored = stream.get_raw_message(seq).await.expect("stored");
        assert_eq!(Some(stored.subject.to_string()), event.subject());
        assert_eq!(
            stored.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(event.event_id())
        );
        assert_eq!(&AnalyticsEvent::decode(stored.payload).expect("decodes"), event);
    }
}

#[tokio::test]
async fn a_republished_event_is_recognised_as_a_duplicate() {
    let nats = NatsServer::start().await.expect("nats");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = analytics_stream(&jetstream::new(client.clone())).await;
    let publisher = AnalyticsPublisher::new(client, PublisherSettings::default());
    let event = sample_events().remove(2);
    let first = publisher.publish(&event).await.expect("published");
    let again = publisher.publish(&event).await.expect("acknowledged");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

#[tokio::test]
async fn many_more_events_than_the_in_flight_limit_are_all_acknowledged() {
    let nats = NatsServer::start().await.expect("nats");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = analytics_stream(&jetstream::new(client.clone())).await;
    let publisher = AnalyticsPublisher::new(
        client,
        PublisherSettings {
            max_in_flight: 64,
            ..Default::default()
        },
    );
    let template = sample_events();
    let events: Vec<AnalyticsEvent> = (0..12_000)
        .map(|i| {
            let mut e = template[i % template.len()].clone();
            if let Some(c) = e.context.as_mut() {
                c.event_id = uuid::Uuid::now_v7().to_string();
            }
            e
        })
        .collect();
    // Two callers at once share the same bound.
    let (a, b) = tokio::join!(
        publisher.publish_all(&events[..6000]),
        publisher.publish_all(&events[6000..])
    );
    assert!(a.iter().chain(b.iter()).all(Result::is_ok));
    assert_eq!(stream.info().await.expect("info").state.messages, 12_000);
}

#[tokio::test]
async fn events_without_a_type_or_id_are_refused_and_nats_down_is_an_error_not_a_hang() {
    let mut nats = NatsServer::start().await.expect("nats");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    analytics_stream(&jetstream::new(client.clone())).await;
    let publisher = AnalyticsPublisher::new(
        client,
        PublisherSettings {
            ack_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    assert!(matches!(
        publisher.publish(&AnalyticsEvent::default()).await,
        Err(PublishError::NoEventType)
    ));
    let mut no_id = sample_events().remove(0);
    if let Some(c) = no_id.context.as_mut() {
        c.event_id.clear();
    }
    assert!(matches!(publisher.publish(&no_id).await, Err(PublishError::NoEventId)));

    nats.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), publisher.publish(&sample_events().remove(1)))
        .await
        .expect("returns instead of hanging");
    assert!(outcome.is_err(), "{outcome:?}");
}

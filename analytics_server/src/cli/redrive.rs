//! `analytics_server redrive`: publishes dead-lettered messages again on their original subjects, for poison that
//! is poison no longer (a limit raised since, a build that knows a newer event type), and removes each from the
//! dead-letter stream once JetStream has acknowledged its re-publication.
//!
//! Nothing is lost either way: a message still poison is dead-lettered again by the ingester; one re-published
//! twice (a redrive stopped between the ack and the removal, then run again) carries the same `Nats-Msg-Id`, which
//! JetStream drops inside its duplicate window, and its events collapse in ClickHouse by `event_id` after it, also
//! events published without an `event_id`: their ids come from the dead letter (`Fechatter-Redrive-Of`). A
//! copy cut to fit (`Fechatter-Original-Size`) holds only the start of its payload: it is left where it is.
//!
//! A run goes up to the last dead letter there was when it began: what is still poison comes back at a later
//! sequence while it runs, and is left for a later run instead of going round forever. And it re-publishes only
//! on subjects the ingester consumes (`integrations.messaging.subjects.analytics_events`): the original subject is
//! a header anyone able to publish on the dead-letter subject can write, and redrive publishes with the
//! operator's credentials (`$JS.API.…` would be a JetStream command).

use super::status::jetstream_context;
use crate::config::{Settings, subject_matches};
use crate::dead_letter::{HEADER_ORIGINAL_SIZE, HEADER_REASON, HEADER_REDRIVE_OF, HEADER_SUBJECT};
use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;

/// Options of `redrive`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedriveArgs {
    /// Only the messages dead-lettered for this reason (`too_many_events`, `missing_event_type`, …, as `status`
    /// and the `Fechatter-Error-Reason` header name them).
    #[arg(long)]
    pub reason: Option<String>,
    /// List what would be re-published, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Re-published (acknowledged) and removed from the dead-letter stream; with `--dry-run`, those that would be.
    pub redriven: u64,
    /// Left: cut to fit, so not whole.
    pub cut: u64,
    /// Left: of another reason than `--reason`.
    pub passed_over: u64,
    /// Left: no original subject, or one the ingester does not consume.
    pub foreign: u64,
}

/// Runs `redrive` and prints what it did; the first failure stops it, named (what was done before it stays done).
pub async fn run(settings: &Settings, args: &RedriveArgs) -> anyhow::Result<bool> {
    let js = jetstream_context(settings, "analytics_server redrive").await?;
    let report = redrive(&js, settings, args).await?;
    let verb = if args.dry_run {
        "would re-publish"
    } else {
        "re-published"
    };
    println!(
        "{verb} {} dead letter(s); left {} cut to fit, {} of other reasons and {} with no analytics subject",
        report.redriven, report.cut, report.passed_over, report.foreign
    );
    Ok(true)
}

/// Re-publishes the dead letters `args` choose, oldest first, each removed once JetStream acknowledged it.
pub async fn redrive(js: &Context, settings: &Settings, args: &RedriveArgs) -> anyhow::Result<Report> {
    let name = &settings.jetstream.dead_letter_stream;
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("no dead-letter stream {name} (jetstream.dead_letter_stream)"))?;
    let last = stream
        .info()
        .await
        .with_context(|| format!("reading the state of {name}"))?
        .state
        .last_sequence;
    let consumed = &settings.integrations.messaging.subjects.analytics_events;
    let mut report = Report::default();
    let mut next = 1;
    while next <= last {
        let message = match stream.get_first_raw_message_by_subject(">", next).await {
            Ok(message) if message.sequence <= last => message,
            Ok(_) => break,
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(err) => return Err(err).with_context(|| format!("reading {name} at sequence {next}")),
        };
        next = message.sequence + 1;
        let header = |key: &str| message.headers.get(key).map(|v| v.as_str().to_owned());
        let Some(subject) = header(HEADER_SUBJECT).filter(|s| subject_matches(consumed, s)) else {
            report.foreign += 1;
            continue;
        };
        if let Some(wanted) = &args.reason
            && header(HEADER_REASON).as_deref() != Some(wanted.as_str())
        {
            report.passed_over += 1;
            continue;
        }
        if header(HEADER_ORIGINAL_SIZE).is_some() {
            report.cut += 1;
            continue;
        }
        if args.dry_run {
            println!(
                "{name} #{}: {subject} ({})",
                message.sequence,
                header(HEADER_REASON).unwrap_or_default()
            );
            report.redriven += 1;
            continue;
        }
        js.publish_with_headers(
            subject.clone(),
            republication_headers(name, &message),
            message.payload.clone(),
        )
        .await
        .with_context(|| format!("re-publishing {name} #{} on {subject}", message.sequence))?
        .await
        .with_context(|| {
            format!(
                "JetStream did not acknowledge {name} #{} on {subject}",
                message.sequence
            )
        })?;
        stream
            .delete_message(message.sequence)
            .await
            .with_context(|| format!("removing {name} #{} after re-publishing it", message.sequence))?;
        report.redriven += 1;
    }
    Ok(report)
}

/// The headers of the re-publication of `message`, a dead letter of stream `stream`: the same for every copy of
/// it, so that JetStream drops a second copy inside its duplicate window (`Nats-Msg-Id`), and the ingester stores
/// the events of any later one under the same ids ([`HEADER_REDRIVE_OF`]).
pub fn republication_headers(stream: &str, message: &StreamMessage) -> HeaderMap {
    let stored_ns = message.time.unix_timestamp_nanos();
    let mut headers = HeaderMap::new();
    // The id earlier builds sent, so that a redrive they left unfinished is still recognised as a copy.
    let id = format!("redrive-{stream}-{}-{stored_ns}", message.sequence);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    let dead_letter = format!("{stream}/{stored_ns}/{}", message.sequence);
    headers.insert(HEADER_REDRIVE_OF, dead_letter.as_str());
    headers
}

//! Server streams whose reader's pace is nobody else's problem.
//!
//! A streamed answer (SearchItems, ExportTenant, MigrateTenants) is made by
//! a producer task of its own, which hands each message over a small
//! channel ([`Producer::send`]). The producer does its work (reading a
//! tenant, a chunk of a file) to the end before it waits for the reader, so
//! that while it waits it holds no tenant's gate, no connection and no
//! lock: a client that stops reading blocks no lifecycle operation and no
//! other call. A reader that has not taken a message for the stall timeout
//! ends the stream: the producer stops (and drops what it holds, such as a
//! staged snapshot), and the client, if it reads again, gets the messages
//! sent so far and then UNAVAILABLE saying why. A stream may run as long as
//! its reader keeps reading: there is no fixed deadline (only the client's
//! own).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// The messages a producer sends: at most this many wait for the reader.
const WAITING: usize = 2;

/// The answer of a streaming call, as tonic serves it.
pub type Answer<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why a producer must stop.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The client went away (or cancelled the call).
    Gone,
    /// The client did not read for the stall timeout.
    Stalled,
}

/// The producing end of a streamed answer.
pub struct Producer<T> {
    messages: mpsc::Sender<T>,
    stall: Duration,
    ending: Arc<Mutex<Option<Status>>>,
}

/// A streamed answer and its producer: messages sent go to the client in
/// order, then the status the producer ended with, if any.
pub fn open<T: Send + 'static>(stall: Duration) -> (Producer<T>, Answer<T>) {
    let (messages, received) = mpsc::channel(WAITING);
    let ending = Arc::new(Mutex::new(None::<Status>));
    let producer = Producer {
        messages,
        stall,
        ending: ending.clone(),
    };
    let answer = futures::stream::unfold(
        (received, Some(ending)),
        |(mut received, ending)| async move {
            match received.recv().await {
                Some(message) => Some((Ok(message), (received, ending))),
                None => {
                    let status = ending?.lock().expect("never poisoned").take()?;
                    Some((Err(status), (received, None)))
                }
            }
        },
    );
    (producer, Box::pin(answer))
}

impl<T> Producer<T> {
    /// Sends the next message, waiting for the reader for at most the stall
    /// timeout.
    pub async fn send(&self, message: T) -> Result<(), Stopped> {
        match tokio::time::timeout(self.stall, self.messages.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stopped::Gone),
            Err(_) => {
                self.end_with(Status::unavailable(format!(
                    "the stream was ended because its client took no message for {} ms \
                     (--stream-stall-ms): read faster, or call again",
                    self.stall.as_millis()
                )));
                Err(Stopped::Stalled)
            }
        }
    }

    /// Ends the stream with `status`, after the messages sent so far.
    pub fn end_with(&self, status: Status) {
        let mut ending = self.ending.lock().expect("never poisoned");
        ending.get_or_insert(status);
    }

    /// Whether the client went away.
    pub fn is_gone(&self) -> bool {
        self.messages.is_closed()
    }

    /// Waits until the client goes away: for a producer whose work may
    /// send nothing for a long time, so that it stops when nobody waits.
    pub async fn gone(&self) {
        self.messages.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_reader_that_stops_reading_ends_the_stream_after_the_stall_timeout() {
        let (producer, mut answer) = open::<u32>(Duration::from_millis(50));
        for n in 0..WAITING as u32 {
            producer.send(n).await.unwrap();
        }
        // Nobody reads: the next message waits for the stall timeout.
        assert_eq!(producer.send(99).await, Err(Stopped::Stalled));
        drop(producer);
        let mut received = Vec::new();
        while let Some(item) = answer.next().await {
            received.push(item);
        }
        assert_eq!(received.len(), WAITING + 1);
        let status = received.pop().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("50 ms"), "{status:?}");
    }

    #[tokio::test]
    async fn a_reader_that_went_away_stops_the_producer() {
        let (producer, answer) = open::<u32>(Duration::from_secs(60));
        let waiting = producer.gone();
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(answer);
        waiting.await;
        assert!(producer.is_gone());
        assert_eq!(producer.send(1).await, Err(Stopped::Gone));
    }
}

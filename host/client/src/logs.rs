//! An operation's log lines: read once (JSON lines), or followed (Server-Sent Events) until the
//! operation has ended and its last lines are out.

use eventsource_stream::Eventsource;
use futures::stream::{BoxStream, StreamExt};
use opshost_api::LogLine;
use opshost_api::id::url_segment as segment;
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// At most `limit` log lines of operation `id` after line `after`, oldest first.
    pub async fn logs(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, ClientError> {
        let response = self
            .request(Method::GET, &format!("/v1/operations/{}/logs", segment(id)))
            .query(&[("after", after), ("limit", limit as u64)])
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        if !status.is_success() {
            return Err(ClientError::from_body(status, &body, None));
        }
        body.split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line)
                    .map_err(|e| ClientError::Protocol(format!("a log line: {e}")))
            })
            .collect()
    }

    /// The log lines of operation `id` after line `after` as they are written, ending once the
    /// operation has ended and its last lines are out. A stream the host closes before that
    /// (it is going down) ends with a `Protocol` error naming the last line seen, after which
    /// the caller resumes.
    pub async fn follow_logs(
        &self,
        id: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<LogLine, ClientError>>, ClientError> {
        let response = self
            .request(Method::GET, &format!("/v1/operations/{}/logs", segment(id)))
            .query(&[("follow", "true")])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("last-event-id", after.to_string())
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(ClientError::Transport)?;
            return Err(ClientError::from_body(status, &body, None));
        }
        let events = response.bytes_stream().eventsource().boxed();
        let lines = futures::stream::unfold(
            (events, after, false),
            |(mut events, mut last, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let item = match events.next().await {
                        Some(Ok(message)) if message.event == "log" => {
                            serde_json::from_str::<LogLine>(&message.data)
                                .map_err(|e| ClientError::Protocol(format!("a log line: {e}")))
                        }
                        Some(Ok(message)) if message.event == "end" => return None,
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => Err(ClientError::Protocol(error.to_string())),
                        None => Err(ClientError::Protocol(format!(
                            "the host closed the follow before the operation's end; resume after line {last}"
                        ))),
                    };
                    if let Ok(line) = &item {
                        last = line.seq;
                    }
                    let ended = item.is_err();
                    return Some((item, (events, last, ended)));
                }
            },
        );
        Ok(lines.boxed())
    }
}

//! SSE frames of operation events, encoded once for every watcher of an operation.
//!
//! An event seen by 10,000 watchers is encoded into one frame (`event:`, `id:` = revision,
//! `data:` = the snapshot's JSON) and that frame's bytes are shared by every connection, so
//! fan-out costs one copy of a pointer per watcher instead of one JSON encoding.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use opshost_api::OperationEvent;

/// Frames kept for watchers that are still catching up.
const CAPACITY: usize = 4096;

/// Recently encoded frames, by operation id and revision.
#[derive(Default)]
pub(crate) struct Frames {
    state: Mutex<Recent>,
}

/// Frames by id, then revision (so a lookup allocates nothing), and the order they came in.
#[derive(Default)]
struct Recent {
    frames: HashMap<String, BTreeMap<u64, Bytes>>,
    order: VecDeque<(String, u64)>,
    len: usize,
}

impl Frames {
    /// The frame of `event`, encoded now unless a watcher already did.
    pub(crate) fn frame(&self, event: &OperationEvent) -> Bytes {
        let snapshot = event.snapshot();
        let (id, revision) = (snapshot.id.as_str(), snapshot.revision);
        let cached = self
            .lock()
            .frames
            .get(id)
            .and_then(|by_revision| by_revision.get(&revision).cloned());
        if let Some(frame) = cached {
            return frame;
        }
        let frame = encode(event.kind().as_str(), revision, &json(snapshot));
        let mut recent = self.lock();
        let by_revision = recent.frames.entry(id.to_owned()).or_default();
        if by_revision.insert(revision, frame.clone()).is_none() {
            recent.len += 1;
            recent.order.push_back((id.to_owned(), revision));
        }
        while recent.len > CAPACITY {
            let Some((old, old_revision)) = recent.order.pop_front() else {
                break;
            };
            if let Some(by_revision) = recent.frames.get_mut(&old) {
                by_revision.remove(&old_revision);
                if by_revision.is_empty() {
                    recent.frames.remove(&old);
                }
            }
            recent.len -= 1;
        }
        frame
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// One SSE frame. `data` is JSON, which holds no raw newline.
pub(crate) fn encode(event: &str, id: u64, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\nid: {id}\ndata: {data}\n\n"))
}

/// An `error` frame, which has no revision.
pub(crate) fn error(data: &str) -> Bytes {
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The headers of every event stream: not cached, and not held back by a proxy that buffers
/// responses (nginx reads `X-Accel-Buffering`).
pub(crate) fn stream_headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

/// The frame of a keep-alive comment.
pub(crate) fn keep_alive() -> Bytes {
    Bytes::from_static(b":\n\n")
}

#[cfg(test)]
mod tests {
    use opshost_api::{EventKind, Snapshot};

    use super::*;

    fn event(revision: u64) -> OperationEvent {
        let mut snapshot =
            Snapshot::accepted("op-1".into(), "svc".into(), "Op".into(), "v1".into());
        snapshot.revision = revision;
        OperationEvent::new(EventKind::Progress, snapshot)
    }

    #[test]
    fn an_event_is_encoded_once_and_its_frame_shared() {
        let frames = Frames::default();
        let first = frames.frame(&event(2));
        let second = frames.frame(&event(2));
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "the same bytes, not a copy"
        );
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert!(
            text.starts_with("event: progress\nid: 2\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");
    }

    #[test]
    fn old_frames_are_forgotten_beyond_the_capacity() {
        let frames = Frames::default();
        let first = frames.frame(&event(1));
        for revision in 2..=(CAPACITY as u64 + 1) {
            frames.frame(&event(revision));
        }
        assert_ne!(frames.frame(&event(1)).as_ptr(), first.as_ptr());
        assert_eq!(frames.lock().len, CAPACITY);
        assert_eq!(frames.lock().order.len(), CAPACITY);
    }
}
